/* The tracked-link builder, no DOM (static/track_url.html and the Chrome extension's popup,
 * extensions/chrome/, load it; tests run it in Node):
 * buildTrackedLinks(input) -> {rdr, xrdr, destination, errors, warnings}.
 * input: {url, tracker, apiVersion, source, medium, campaign, term, content, ename, etyp,
 *         ptyp, aff, xid, sink, score, normalise, utmOnDestination} */
var TRACKED_FIELDS = ['source', 'medium', 'campaign', 'term', 'content', 'ename', 'etyp', 'ptyp', 'aff', 'xid', 'sink', 'score'];
var UTM_FIELDS = ['source', 'medium', 'campaign', 'term', 'content'];

function normaliseValue(v) {
  return String(v).trim().toLowerCase().replace(/\s+/g, '_').replace(/[^\p{L}\p{N}_.\-]/gu, '');
}

function parseHttpUrl(s) {
  s = String(s || '').trim();
  if (!s) return null;
  if (!/^[a-z][a-z0-9+.\-]*:/i.test(s)) s = 'https://' + s.replace(/^\/+/, '');
  try {
    var u = new URL(s);
    if ((u.protocol !== 'http:' && u.protocol !== 'https:') || !u.hostname || !/[.:]|^localhost$/.test(u.hostname)) return null;
    return u;
  } catch (e) {
    return null;
  }
}

function buildTrackedLinks(input) {
  var o = input || {};
  var res = { rdr: '', xrdr: '', destination: '', errors: [], warnings: [] };

  var dest = parseHttpUrl(o.url);
  if (!String(o.url || '').trim()) res.errors.push('Enter the destination URL.');
  else if (!dest) res.errors.push('The destination must be an http(s) URL, e.g. https://www.example.com/page.');

  var tracker = parseHttpUrl(o.tracker);
  var version = parseInt(o.apiVersion, 10);
  if (!tracker) res.errors.push('Enter the tracker URL, e.g. https://t.example.com.');
  var base = '';
  if (tracker) {
    base = (tracker.origin + tracker.pathname).replace(/\/+$/, '');
    var m = /^(.*)\/tr\/v(\d+)(?:\/.*)?$/.exec(base); // pasted https://t.example.com/tr/v1/...
    if (m) {
      base = m[1];
      if (!(version > 0)) version = parseInt(m[2], 10);
    }
  }
  if (!(version > 0)) version = 1;

  var values = {};
  TRACKED_FIELDS.forEach(function (k) {
    var v = o[k] === undefined || o[k] === null ? '' : String(o[k]).trim();
    if (v && k !== 'score' && o.normalise !== false) v = normaliseValue(v);
    if (v) values[k] = v;
  });
  if (values.score !== undefined && !/^-?\d+(\.\d+)?$/.test(values.score)) {
    res.errors.push('Score must be a number.');
  }
  ['source', 'medium', 'campaign'].forEach(function (k) {
    if (!values[k]) res.warnings.push('No ' + k + ': campaign reports group clicks by source, medium and campaign.');
  });
  if (res.errors.length) return res;

  if (o.utmOnDestination) {
    UTM_FIELDS.forEach(function (k) {
      if (values[k]) dest.searchParams.set('utm_' + k, values[k]);
    });
  }
  res.destination = dest.href;

  var query = 'url=' + encodeURIComponent(dest.href);
  TRACKED_FIELDS.forEach(function (k) {
    if (values[k] !== undefined) query += '&' + k + '=' + encodeURIComponent(values[k]);
  });
  res.rdr = base + '/tr/v' + version + '/rdr/?' + query;
  res.xrdr = base + '/tr/v' + version + '/xrdr/?' + query;
  if (tracker && dest.host === tracker.host) {
    res.warnings.push('The destination is on the tracker host itself.');
  }
  return res;
}

if (typeof module === 'object' && module && module.exports) module.exports = { buildTrackedLinks: buildTrackedLinks };
