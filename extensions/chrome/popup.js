/* The popup: the current tab's URL through buildTrackedLinks (track_url.js, shared with
 * static/track_url.html) and, with an admin API token, a short link for the tracked link through
 * shortLinkClient (shortlinks.js, shared with static/shorten.html). Settings live in
 * chrome.storage.local of this profile. */
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var SETTINGS = ['tracker', 'apiVersion', 'token', 'source', 'medium'];
  var FIELDS = ['url', 'source', 'medium', 'campaign', 'term', 'content'];
  var storage = chrome.storage.local;

  function input() {
    var o = { tracker: $('tracker').value, apiVersion: $('apiVersion').value,
              normalise: $('normalise').checked, utmOnDestination: $('utmOnDestination').checked };
    FIELDS.forEach(function (k) { o[k] = $(k).value; });
    return o;
  }

  function render() {
    var r = buildTrackedLinks(input());
    var msgs = $('msgs');
    msgs.textContent = '';
    r.errors.concat(r.warnings).forEach(function (text, i) {
      var li = document.createElement('li');
      li.className = i < r.errors.length ? 'error' : 'warning';
      li.textContent = text;
      msgs.appendChild(li);
    });
    $('rdr').value = r.rdr;
    $('rdr').textContent = r.rdr;
    $('copyRdr').disabled = !r.rdr;
    $('shorten').disabled = !r.rdr || !$('urlfrom').value.trim() || !$('token').value.trim();
    return r;
  }

  function save() {
    var values = {};
    SETTINGS.forEach(function (k) { values[k] = $(k).value; });
    storage.set(values);
  }

  function say(text, ok) {
    $('shortMsg').textContent = text;
    $('shortMsg').className = 'note ' + (ok ? 'ok' : 'bad');
  }

  function shorten() {
    var r = render();
    if (!r.rdr) return;
    var client = shortLinkClient({ tracker: $('tracker').value, apiVersion: $('apiVersion').value,
                                   token: $('token').value, missing: 'Enter the admin API token under Gateway.' });
    $('shorten').disabled = true;
    client.save({ urlfrom: $('urlfrom').value.trim(), urlto: r.rdr, status: 302 }).then(function (data) {
      say((data && data.created ? 'Created ' : 'Updated ') + (data && data.urlfrom), true);
    }, function (e) {
      say(e.message, false);
    }).then(render);
  }

  $('form').addEventListener('input', function () { save(); render(); });
  $('form').addEventListener('change', render);
  $('form').addEventListener('submit', function (e) { e.preventDefault(); render(); });
  $('copyRdr').addEventListener('click', function () { navigator.clipboard.writeText($('rdr').textContent); });
  $('shorten').addEventListener('click', shorten);

  storage.get(SETTINGS, function (values) {
    SETTINGS.forEach(function (k) { if (values[k]) $(k).value = values[k]; });
    if (!values.tracker) $('settings').open = true;
    // The page this popup was opened on (activeTab grants its URL when the user clicks the action).
    chrome.tabs.query({ active: true, currentWindow: true }, function (tabs) {
      var tab = tabs && tabs[0];
      var prefill = new URLSearchParams(location.search).get('url');
      if (prefill) $('url').value = prefill;
      else if (tab && /^https?:/.test(tab.url || '')) $('url').value = tab.url;
      render();
    });
  });
})();
