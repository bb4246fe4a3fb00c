/* The short-link admin API client, no DOM (shorten.html and shorten_url.html load it; tests run
 * it in Node): shortLinkClient({tracker, apiVersion, token | uid + secret, fetch, missing})
 * -> {save(body), list(host), remove(urlfrom)}, each a Promise of the JSON answer that rejects
 * with an Error carrying the API's reason and HTTP status (``missing``: the reason when no
 * credentials were given). */
function shortLinkClient(opts) {
  var o = opts || {};
  var doFetch = o.fetch || (typeof fetch === 'function' ? fetch : null);
  var base = String(o.tracker || '').trim().replace(/\/+$/, '');
  var api = base + '/tr/v' + (parseInt(o.apiVersion, 10) || 1) + '/rpi/';
  var authorization;
  if (String(o.token || '').trim()) {
    authorization = 'Bearer ' + String(o.token).trim();
  } else if (String(o.uid || '').trim() && o.secret) {
    var pair = String(o.uid).trim() + ':' + o.secret;
    authorization = 'Basic ' + btoa(unescape(encodeURIComponent(pair)));
  }

  function call(method, path, body) {
    if (!authorization) return Promise.reject(new Error(o.missing || 'Enter an API token, or a uid and secret.'));
    var init = { method: method, headers: { Authorization: authorization }, credentials: 'omit' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return doFetch(api + path, init).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!resp.ok) {
          var err = new Error((data && data.error) || ('HTTP ' + resp.status));
          err.status = resp.status;
          throw err;
        }
        return data;
      });
    });
  }

  return {
    save: function (body) { return call('POST', 'redirect', body); },
    list: function (host) { return call('GET', 'redirects/' + encodeURIComponent(String(host).trim())); },
    remove: function (urlfrom) { return call('DELETE', 'redirect?urlfrom=' + encodeURIComponent(urlfrom)); }
  };
}
