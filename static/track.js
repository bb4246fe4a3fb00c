/*! sfpltracker browser client (track.js) | Apache-2.0 | no dependencies
 *
 * Usage (auto: sends a page_view once the script has run):
 *   <script src="https://t.example.com/tr/v1/pub/track.js" async
 *           data-app="shop" data-rel="2024.05" data-ws="true"></script>
 * or manual:
 *   <script src="/track.js" data-auto="false"></script>
 *   <script>sfpl.init({endpoint: "https://t.example.com", apiVersion: 1});</script>
 *
 * Public API (window.sfpl, also window.tracker when that name is free):
 *   init(options)         configure and start (page view unless pageView: false)
 *   track(ename, props)   queue a custom event, returns its eid (or null)
 *   page(props)           queue a page_view (for single-page apps after navigation)
 *   identify(uid)         attach uid to following events (identify(null) clears)
 *   setVid(vid)           use a visitor id chosen by the page (never sent under GPC / opt-out)
 *   optOut() / optIn() / isOptedOut()
 *   agree({cflags, ...})  record a consent decision (POST /ppi/agree), resolves to the server's
 *                         JSON; also stores it in the CookieConsent cookie (cookie: false: not)
 *   consent(vid)          that visitor's consent records, newest first (GET /ppi/agree?vid=)
 *   jurisdictions()       the gateway's jurisdictions (GET /ppi/jds)
 *   flush()               send queued events now, resolves to true when all were accepted
 *   getConfig()           copy of the effective configuration
 *   lz4.compressBlock(bytes), lz4.frame(bytes)   the WebSocket payload encoder
 * Calls queued before the script loaded (window.sfpl = [["track", "x", {}], ...]) are replayed.
 * Nothing here ever throws into the host page.
 *
 * Written as ES2017 (no object spread, no optional chaining).
 */
(function () {
  'use strict';

  var VERSION = '1.0.0';

  /* ------------------------------------------------------------------ LZ4 block compressor
   *
   * Produces a raw LZ4 *block* (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md):
   * a run of sequences, each = token byte (high nibble literal length, low nibble match
   * length - 4, 15 meaning "more length bytes follow, 255 = keep adding"), the literals,
   * a 2-byte little-endian match offset (1..65535) and the extra match-length bytes. The last
   * sequence carries literals only. End-of-block rules honoured here:
   *   - the last 5 bytes are always literals (LAST_LITERALS),
   *   - the last match starts at least 12 bytes before the end (MFLIMIT),
   *   - so inputs shorter than 13 bytes are a single literal-only sequence.
   * Strategy: greedy, one 4-byte hash table slot per hash (65536 slots), backward match
   * extension, skip acceleration on incompressible data. Not the best ratio, always valid.
   *
   * lz4Frame() prepends the uncompressed size as a 4-byte little-endian integer, which is
   * exactly Python's lz4.block.compress(data) (store_size=True) / lz4.block.decompress(),
   * Go's bkaradzic/go-lz4 Encode/Decode, and what the tracker's /tr/vN/ws expects.
   */
  var LZ4_MIN_MATCH = 4;
  var LZ4_MFLIMIT = 12;
  var LZ4_LAST_LITERALS = 5;
  var LZ4_MAX_OFFSET = 65535;
  var LZ4_HASH_LOG = 16;

  function read32(a, i) {
    return a[i] | (a[i + 1] << 8) | (a[i + 2] << 16) | (a[i + 3] << 24);
  }

  function writeLength(out, op, len) {
    // extra length bytes after a nibble of 15: 255, 255, ..., remainder
    while (len >= 255) {
      out[op++] = 255;
      len -= 255;
    }
    out[op++] = len;
    return op;
  }

  /** @param {Uint8Array} src @returns {Uint8Array} raw LZ4 block (no size prefix) */
  function lz4CompressBlock(src) {
    var n = src.length;
    var out = new Uint8Array(n + ((n / 255) | 0) + 16); // LZ4_compressBound
    var op = 0;
    var anchor = 0; // start of pending literals
    var litLen, tokenPos, token;

    if (n > LZ4_MFLIMIT) {
      var table = new Int32Array(1 << LZ4_HASH_LOG); // position + 1, 0 = empty
      var lastMatchStart = n - LZ4_MFLIMIT; // a match may start at <= this position
      var matchLimit = n - LZ4_LAST_LITERALS; // and must end at <= this position
      var ip = 0;
      var misses = 0;
      while (ip <= lastMatchStart) {
        var seq = read32(src, ip);
        var h = Math.imul(seq, -1640531535) >>> (32 - LZ4_HASH_LOG); // 2654435761
        var ref = table[h] - 1;
        table[h] = ip + 1;
        if (ref < 0 || ip - ref > LZ4_MAX_OFFSET || read32(src, ref) !== seq) {
          ip += 1 + (misses++ >> 6); // step up while nothing matches
          continue;
        }
        misses = 0;
        // extend forwards (never into the last 5 bytes), then backwards over pending literals
        var mEnd = ip + LZ4_MIN_MATCH;
        var r = ref + LZ4_MIN_MATCH;
        while (mEnd < matchLimit && src[mEnd] === src[r]) {
          mEnd++;
          r++;
        }
        while (ip > anchor && ref > 0 && src[ip - 1] === src[ref - 1]) {
          ip--;
          ref--;
        }
        // emit: token, literal length, literals, offset, match length
        litLen = ip - anchor;
        tokenPos = op++;
        if (litLen >= 15) {
          token = 0xf0;
          op = writeLength(out, op, litLen - 15);
        } else {
          token = litLen << 4;
        }
        out.set(src.subarray(anchor, ip), op);
        op += litLen;
        var offset = ip - ref;
        out[op++] = offset & 0xff;
        out[op++] = offset >>> 8;
        var ml = mEnd - ip - LZ4_MIN_MATCH;
        if (ml >= 15) {
          token |= 15;
          op = writeLength(out, op, ml - 15);
        } else {
          token |= ml;
        }
        out[tokenPos] = token;
        ip = mEnd;
        anchor = ip;
        if (ip - 2 <= lastMatchStart) {
          table[Math.imul(read32(src, ip - 2), -1640531535) >>> (32 - LZ4_HASH_LOG)] = ip - 1;
        }
      }
    }
    // last sequence: literals only
    litLen = n - anchor;
    tokenPos = op++;
    if (litLen >= 15) {
      out[tokenPos] = 0xf0;
      op = writeLength(out, op, litLen - 15);
    } else {
      out[tokenPos] = litLen << 4;
    }
    out.set(src.subarray(anchor, n), op);
    op += litLen;
    return out.subarray(0, op);
  }

  /** 4-byte little-endian uncompressed size + LZ4 block (lz4.block default format). */
  function lz4Frame(src) {
    var block = lz4CompressBlock(src);
    var n = src.length;
    var out = new Uint8Array(4 + block.length);
    out[0] = n & 0xff;
    out[1] = (n >>> 8) & 0xff;
    out[2] = (n >>> 16) & 0xff;
    out[3] = (n >>> 24) & 0xff;
    out.set(block, 4);
    return out;
  }

  var lz4 = { compressBlock: lz4CompressBlock, frame: lz4Frame };

  // Node / CommonJS (tests, server-side rendering): only the encoder, no DOM needed.
  if (typeof module === 'object' && module && module.exports) {
    module.exports = { lz4CompressBlock: lz4CompressBlock, lz4Frame: lz4Frame, version: VERSION };
  }

  var W = typeof window !== 'undefined' ? window : null;
  if (!W) return;
  if (W.sfpl && W.sfpl.__sfpl) return; // loaded twice: keep the first instance

  /* ------------------------------------------------------------------ environment */
  var D = W.document || null;
  var N = W.navigator || {};
  var script = null;
  try {
    script = D && D.currentScript;
  } catch (e) {
    script = null;
  }
  var preQueue = W.sfpl; // snippet-style queue: [["init", {...}], ["track", "x"]]

  function noop() {}

  function attr(name) {
    try {
      if (script && script.getAttribute) return script.getAttribute('data-' + name);
    } catch (e) {
      /* ignore */
    }
    return null;
  }

  function toBool(v, dflt) {
    if (v === null || v === undefined) return dflt;
    if (typeof v === 'boolean') return v;
    if (v === '') return true; // <script data-ws>
    return !/^(0|false|no|off)$/i.test(String(v));
  }

  function toNum(v, dflt) {
    var x = Number(v);
    return v !== null && v !== undefined && v !== '' && isFinite(x) && x >= 0 ? x : dflt;
  }

  /* ------------------------------------------------------------------ configuration */
  var DEFAULTS = {
    endpoint: '', // tracker base URL, e.g. https://t.example.com (a path prefix is kept)
    apiVersion: 0, // 0 = from endpoint / script path, else 1
    ws: false, // send over one WebSocket (LZ4 binary frames) when possible
    wsAck: true, // ask the server for acks (?ack=1), resend unacked events over HTTP
    wsCompress: true, // binary LZ4 frames (false: JSON text frames)
    ackTimeout: 10000, // ms before an unacked WebSocket event is resent over HTTP
    wsMaxRetries: 5, // consecutive failed connects before staying on HTTP for this page
    batchSize: 20, // events per POST; reaching it flushes at once
    batchDelay: 1000, // ms to wait for more events before POSTing
    maxQueue: 1000, // oldest events dropped beyond this
    maxRetries: 10, // HTTP attempts per event (5xx, 429, network errors)
    retryBase: 1000, // ms, doubled per consecutive failure, capped at 60 s
    sessionMinutes: 30, // client session (sid) inactivity timeout
    pageView: true, // page_view on init
    app: '',
    rel: '',
    ptyp: '', // page type: string or function(location) -> string
    vid: '', // visitor id chosen by the page (optional)
    honorDnt: false, // treat navigator.doNotTrack like Global Privacy Control
    consentCookie: true, // agree() also sets the CookieConsent cookie on the page's site
    cookieDays: 395, // its lifetime: the gateway's VisitorCookieDays
    cookieDomain: '', // e.g. ".example.com" to share it with a tracker on t.example.com
    debug: false
  };

  var ATTRS = {
    endpoint: 'endpoint',
    apiVersion: 'api-version',
    ws: 'ws',
    wsAck: 'ws-ack',
    wsCompress: 'ws-compress',
    ackTimeout: 'ack-timeout',
    batchSize: 'batch-size',
    batchDelay: 'batch-delay',
    maxQueue: 'max-queue',
    maxRetries: 'max-retries',
    retryBase: 'retry-base',
    sessionMinutes: 'session-minutes',
    pageView: 'page-view',
    app: 'app',
    rel: 'rel',
    ptyp: 'ptyp',
    vid: 'vid',
    honorDnt: 'honor-dnt',
    consentCookie: 'consent-cookie',
    cookieDays: 'cookie-days',
    cookieDomain: 'cookie-domain',
    debug: 'debug'
  };

  function coerce(key, v) {
    var d = DEFAULTS[key];
    if (typeof d === 'boolean') return toBool(v, d);
    if (typeof d === 'number') return toNum(v, d);
    if (key === 'ptyp' && typeof v === 'function') return v;
    return v === null || v === undefined ? d : String(v);
  }

  function scriptConfig() {
    var o = {};
    Object.keys(ATTRS).forEach(function (k) {
      var v = attr(ATTRS[k]);
      if (v !== null) o[k] = v;
    });
    return o;
  }

  function locationOrigin() {
    var loc = W.location || {};
    if (loc.origin && loc.origin !== 'null') return loc.origin;
    return (loc.protocol || 'https:') + '//' + (loc.host || '');
  }

  /** Base URL and API version from the script's own src when no endpoint was given. */
  function derivedEndpoint() {
    var src = '';
    try {
      src = (script && script.src) || '';
    } catch (e) {
      src = '';
    }
    if (src) {
      var m = /^(.*?)\/tr\/v(\d+)\/pub\//.exec(src); // served by the tracker itself
      if (m) return { endpoint: m[1], apiVersion: Number(m[2]) };
      try {
        return { endpoint: new W.URL(src, W.location.href).origin, apiVersion: 0 };
      } catch (e) {
        /* fall through */
      }
    }
    return { endpoint: locationOrigin(), apiVersion: 0 };
  }

  function buildConfig(opts) {
    var raw = Object.assign({}, scriptConfig(), opts || {});
    var c = {};
    Object.keys(DEFAULTS).forEach(function (k) {
      c[k] = coerce(k, raw[k]);
    });
    var ep = String(raw.endpoint || '').trim();
    var ver = c.apiVersion;
    if (!ep) {
      var d = derivedEndpoint();
      ep = d.endpoint;
      ver = ver || d.apiVersion;
    }
    try {
      ep = new W.URL(ep, W.location.href).href; // relative endpoints are allowed
    } catch (e) {
      /* keep as given */
    }
    ep = ep.replace(/[?#].*$/, '').replace(/\/+$/, '');
    var m = /^(.*)\/tr\/v(\d+)$/.exec(ep); // endpoint given as https://host/tr/v2
    if (m) {
      ep = m[1];
      ver = ver || Number(m[2]);
    }
    c.endpoint = ep;
    c.apiVersion = Math.floor(ver) || 1;
    c.batchSize = Math.max(1, Math.min(500, Math.floor(c.batchSize) || 20));
    c.maxQueue = Math.max(c.batchSize, Math.floor(c.maxQueue));
    return c;
  }

  /* ------------------------------------------------------------------ state */
  var cfg = buildConfig({});
  var S = {
    inited: false,
    opts: {},
    autoTimer: null,
    queue: [], // {eid, json, tries}
    timer: null,
    timerAt: 0,
    backoffUntil: 0,
    httpFails: 0,
    firstDone: false,
    uid: null,
    vid: null,
    sid: null,
    sidT: 0,
    last: '',
    lastPage: '',
    optedOut: false,
    agreedVid: null, // the vid the last agree() was recorded under (consent() default)
    // WebSocket
    ws: null,
    wsUrl: '',
    wsOpened: false,
    wsFails: 0,
    wsRetryAt: 0,
    wsDisabled: false,
    inflight: new Map(), // eid -> item, sent on the socket, not yet acked
    ackTimer: null,
    ackSeen: false,
    acksSupported: true
  };
  try {
    S.last = (D && D.referrer) || '';
  } catch (e) {
    S.last = '';
  }
  try {
    S.optedOut = W.localStorage.getItem('sfpl_optout') === '1';
  } catch (e) {
    S.optedOut = false;
  }

  function debug() {
    if (!cfg.debug) return;
    try {
      var args = Array.prototype.slice.call(arguments);
      args.unshift('[sfpl]');
      W.console.debug.apply(W.console, args);
    } catch (e) {
      /* ignore */
    }
  }

  /** GPC, opt-out (and DNT when asked): no vid of our own, no stored ids, no cookies on opt-out. */
  function isPrivate() {
    if (S.optedOut) return true;
    try {
      if (N.globalPrivacyControl === true) return true;
      if (cfg.honorDnt && (N.doNotTrack === '1' || W.doNotTrack === '1')) return true;
    } catch (e) {
      /* ignore */
    }
    return false;
  }

  /* ------------------------------------------------------------------ event fields */
  function hex(bytes) {
    var s = '';
    for (var i = 0; i < bytes.length; i++) s += (bytes[i] < 16 ? '0' : '') + bytes[i].toString(16);
    return s;
  }

  function randomBytes(n) {
    var b = new Uint8Array(n);
    try {
      var c = W.crypto || (typeof crypto !== 'undefined' ? crypto : null);
      if (c && c.getRandomValues) {
        c.getRandomValues(b);
        return b;
      }
    } catch (e) {
      /* fall back */
    }
    for (var i = 0; i < n; i++) b[i] = (Math.random() * 256) | 0;
    return b;
  }

  /** UUIDv7 (time ordered, like the server's own ids). */
  function uuid() {
    var b = randomBytes(16);
    var t = Date.now();
    for (var i = 5; i >= 0; i--) {
      b[i] = t % 256;
      t = Math.floor(t / 256);
    }
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = hex(b);
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }

  function storage() {
    try {
      return W.sessionStorage || null;
    } catch (e) {
      return null;
    }
  }

  /** Client session: kept per tab in sessionStorage (memory only when private), 30 min idle. */
  function sessionId() {
    var now = Date.now();
    var ttl = cfg.sessionMinutes * 60000;
    var st = isPrivate() ? null : storage();
    if (!S.sid && st) {
      try {
        var raw = String(st.getItem('sfpl_sid') || '').split('|');
        if (raw[0] && now - Number(raw[1]) < ttl) {
          S.sid = raw[0];
          S.sidT = Number(raw[1]);
        }
      } catch (e) {
        /* ignore */
      }
    }
    if (!S.sid || now - S.sidT >= ttl) S.sid = uuid();
    S.sidT = now;
    if (st) {
      try {
        st.setItem('sfpl_sid', S.sid + '|' + now);
      } catch (e) {
        /* ignore */
      }
    }
    return S.sid;
  }

  var utmCache = { search: null, params: {} };
  /** utm_source=x -> source: "x" (values as sent; the server normalises case). */
  function utmParams() {
    var search = '';
    try {
      search = String((W.location && W.location.search) || '');
    } catch (e) {
      search = '';
    }
    if (utmCache.search === search) return utmCache.params;
    var out = {};
    search
      .replace(/^\?/, '')
      .split('&')
      .forEach(function (pair) {
        if (!pair) return;
        var i = pair.indexOf('=');
        var k = i < 0 ? pair : pair.slice(0, i);
        var v = i < 0 ? '' : pair.slice(i + 1);
        try {
          k = decodeURIComponent(k.replace(/\+/g, ' '));
          v = decodeURIComponent(v.replace(/\+/g, ' '));
        } catch (e) {
          return;
        }
        if (!/^utm_./i.test(k) || v === '') return;
        k = k.slice(4).toLowerCase();
        if (!(k in out)) out[k] = v; // first value wins, like the server
      });
    utmCache = { search: search, params: out };
    return out;
  }

  function uaInfo() {
    var ua = String(N.userAgent || '');
    var uad = N.userAgentData || null;
    var os = '';
    if (/iPhone|iPad|iPod/i.test(ua)) os = 'iOS';
    else if (/Android/i.test(ua)) os = 'Android';
    else if (/CrOS/.test(ua)) os = 'ChromeOS';
    else if (/Windows/i.test(ua)) os = 'Windows';
    else if (/Macintosh|Mac OS X/i.test(ua)) os = N.maxTouchPoints > 1 ? 'iOS' : 'macOS'; // iPadOS
    else if (/Linux|X11/i.test(ua)) os = 'Linux';
    if (!os && uad && uad.platform) os = String(uad.platform);
    var device = 'Desktop';
    if (
      /iPad|Tablet|PlayBook|Silk|Kindle/i.test(ua) ||
      (/Android/i.test(ua) && !/Mobile/i.test(ua)) ||
      (os === 'iOS' && /Macintosh/.test(ua))
    ) {
      device = 'Tablet';
    } else if (/Mobi|iPhone|iPod|Android|BlackBerry|IEMobile|Opera Mini/i.test(ua) || (uad && uad.mobile)) {
      device = 'Mobile';
    }
    return { os: os, device: device };
  }

  function viewport() {
    var w = 0;
    var h = 0;
    try {
      w = W.innerWidth || (D && D.documentElement && D.documentElement.clientWidth) || 0;
      h = W.innerHeight || (D && D.documentElement && D.documentElement.clientHeight) || 0;
    } catch (e) {
      /* ignore */
    }
    return { w: w, h: h };
  }

  function timezone() {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || '';
    } catch (e) {
      return '';
    }
  }

  function pageType() {
    try {
      if (typeof cfg.ptyp === 'function') return String(cfg.ptyp(W.location) || '');
    } catch (e) {
      return '';
    }
    return cfg.ptyp || '';
  }

  function buildEvent(ename, props) {
    var ev = Object.assign({}, utmParams());
    ev.eid = uuid();
    if (ename !== undefined && ename !== null && ename !== '') ev.ename = String(ename);
    try {
      ev.url = String(W.location.href);
    } catch (e) {
      /* ignore */
    }
    if (S.last) ev.last = S.last;
    ev.sid = sessionId();
    if (!S.firstDone) {
      ev.first = 'true';
      S.firstDone = true;
    }
    if (S.uid) ev.uid = S.uid;
    if (S.vid || cfg.vid) ev.vid = String(S.vid || cfg.vid);
    var tz = timezone();
    if (tz) ev.tz = tz;
    var ua = uaInfo();
    ev.device = ua.device;
    if (ua.os) ev.os = ua.os;
    var vp = viewport();
    ev.w = vp.w;
    ev.h = vp.h;
    var ptyp = pageType();
    if (ptyp) ev.ptyp = ptyp;
    if (cfg.app) ev.app = cfg.app;
    if (cfg.rel) ev.rel = cfg.rel;
    if (props && typeof props === 'object') {
      Object.keys(props).forEach(function (k) {
        if (props[k] !== undefined) ev[k] = props[k];
      });
    }
    if (isPrivate()) delete ev.vid; // the server decides (cookieless id)
    return ev;
  }

  /* ------------------------------------------------------------------ queue */
  function byteLength(s) {
    try {
      if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(s).length;
    } catch (e) {
      /* ignore */
    }
    return s.length * 3;
  }

  function trimQueue() {
    if (S.queue.length > cfg.maxQueue) {
      var dropped = S.queue.splice(0, S.queue.length - cfg.maxQueue);
      debug('queue full, dropped', dropped.length);
    }
  }

  function clearTimer() {
    if (S.timer) clearTimeout(S.timer);
    S.timer = null;
    S.timerAt = 0;
  }

  function schedule(ms) {
    var at = Date.now() + ms;
    if (S.timer && S.timerAt <= at) return;
    clearTimer();
    S.timerAt = at;
    S.timer = setTimeout(function () {
      S.timer = null;
      S.timerAt = 0;
      flush();
    }, ms);
  }

  function enqueue(ev) {
    var json;
    try {
      json = JSON.stringify(ev);
    } catch (e) {
      debug('event not serialisable, dropped', e);
      return null;
    }
    S.queue.push({ eid: ev.eid, json: json, tries: 0 });
    trimQueue();
    if (!S.inited) return ev.eid;
    if (wsOpen() || S.queue.length >= cfg.batchSize) flush();
    else schedule(cfg.batchDelay);
    return ev.eid;
  }

  function requeue(items, retryAfterMs) {
    S.httpFails++;
    var keep = items.filter(function (it) {
      it.tries = (it.tries || 0) + 1;
      return it.tries < cfg.maxRetries;
    });
    if (keep.length < items.length) debug('gave up on', items.length - keep.length, 'events');
    S.queue = keep.concat(S.queue);
    trimQueue();
    var delay =
      retryAfterMs !== null && retryAfterMs !== undefined
        ? retryAfterMs
        : Math.min(60000, cfg.retryBase * Math.pow(2, Math.min(16, S.httpFails - 1)));
    S.backoffUntil = Date.now() + delay;
    if (S.queue.length) schedule(delay);
  }

  /* ------------------------------------------------------------------ HTTP */
  function trUrl() {
    return cfg.endpoint + '/tr/v' + cfg.apiVersion + '/tr/';
  }

  function parseRetryAfter(v) {
    if (v === null || v === undefined || v === '') return null;
    var s = Number(v);
    if (isFinite(s)) return Math.max(0, s * 1000);
    var t = Date.parse(v);
    return isFinite(t) ? Math.max(0, t - Date.now()) : null;
  }

  /**
   * POST a JSON array. A string body makes the request text/plain;charset=UTF-8, a "simple"
   * CORS request without preflight (the server parses JSON whatever the content type).
   * Resolves {status, retryAfter}; status -1 = network / CORS failure. Never rejects.
   */
  function send(url, body, unloading) {
    return new Promise(function (resolve) {
      var creds = S.optedOut ? 'omit' : 'include';
      try {
        if (typeof W.fetch === 'function') {
          W.fetch(url, {
            method: 'POST',
            body: body,
            credentials: creds,
            keepalive: unloading || byteLength(body) < 60000,
            cache: 'no-store'
          }).then(
            function (res) {
              var ra = null;
              try {
                ra = parseRetryAfter(res.headers.get('Retry-After'));
              } catch (e) {
                ra = null;
              }
              resolve({ status: res.status, retryAfter: ra });
            },
            function () {
              resolve({ status: -1, retryAfter: null });
            }
          );
          return;
        }
        if (typeof W.XMLHttpRequest === 'function') {
          var x = new W.XMLHttpRequest();
          x.open('POST', url, true);
          x.withCredentials = creds === 'include';
          x.onload = function () {
            resolve({ status: x.status, retryAfter: parseRetryAfter(x.getResponseHeader('Retry-After')) });
          };
          x.onerror = x.ontimeout = function () {
            resolve({ status: -1, retryAfter: null });
          };
          x.send(body);
          return;
        }
      } catch (e) {
        /* fall through */
      }
      resolve({ status: -1, retryAfter: null });
    });
  }

  function bodyOf(items) {
    return '[' + items.map(function (it) { return it.json; }).join(',') + ']';
  }

  function handleResult(items, r) {
    if ((r.status >= 200 && r.status < 300) || r.status === 0) {
      S.httpFails = 0;
      return true;
    }
    if (r.status === -1 || r.status === 408 || r.status === 429 || r.status >= 500) {
      requeue(items, r.retryAfter);
      return false;
    }
    debug('server refused events', r.status); // 4xx: malformed, retrying cannot help
    return false;
  }

  function postBatch(items, unloading) {
    return send(trUrl(), bodyOf(items), unloading).then(function (r) {
      return handleResult(items, r);
    });
  }

  function postAll(items) {
    var ps = [];
    for (var i = 0; i < items.length; i += cfg.batchSize) ps.push(postBatch(items.slice(i, i + cfg.batchSize), false));
    return Promise.all(ps).then(function (rs) {
      return rs.every(Boolean);
    });
  }

  /* ------------------------------------------------------------------ consent (/ppi) */
  function ppiUrl(action) {
    return cfg.endpoint + '/tr/v' + cfg.apiVersion + '/ppi/' + action;
  }

  /**
   * fetch -> the response's JSON. Rejects with an Error carrying `status` and the server's
   * JSON (`body`, e.g. {"error": "..."}) on a non-2xx answer, or `status` -1 on network errors.
   */
  function requestJson(url, body) {
    if (typeof W.fetch !== 'function') return Promise.reject(new Error('fetch is not available'));
    var init = {
      method: body === undefined ? 'GET' : 'POST',
      credentials: S.optedOut ? 'omit' : 'include',
      cache: 'no-store'
    };
    if (body !== undefined) init.body = body; // a string: text/plain, no CORS preflight
    return W.fetch(url, init).then(
      function (res) {
        return res.text().then(function (text) {
          var data = null;
          try {
            data = text ? JSON.parse(text) : null;
          } catch (e) {
            data = text;
          }
          if (res.status >= 200 && res.status < 300) return data;
          var err = new Error((data && data.error) || 'HTTP ' + res.status);
          err.status = res.status;
          err.body = data;
          throw err;
        });
      },
      function (e) {
        var err = new Error('network error: ' + e);
        err.status = -1;
        throw err;
      }
    );
  }

  /** The context an event would carry that the agreed table keeps (reference c.18). */
  function consentBody(extra) {
    var ev = {};
    var utm = utmParams();
    ['source', 'medium', 'campaign', 'term'].forEach(function (k) {
      if (utm[k]) ev[k] = utm[k];
    });
    try {
      ev.url = String(W.location.href);
    } catch (e) {
      /* ignore */
    }
    ev.sid = sessionId();
    if (S.uid) ev.uid = S.uid;
    if (S.vid || cfg.vid) ev.vid = String(S.vid || cfg.vid);
    var tz = timezone();
    if (tz) ev.tz = tz;
    var ua = uaInfo();
    ev.device = ua.device;
    if (ua.os) ev.os = ua.os;
    var vp = viewport();
    ev.w = vp.w;
    ev.h = vp.h;
    if (cfg.app) ev.app = cfg.app;
    if (cfg.rel) ev.rel = cfg.rel;
    Object.keys(extra).forEach(function (k) {
      if (extra[k] !== undefined && k !== 'cookie') ev[k] = extra[k];
    });
    if (isPrivate()) delete ev.vid; // as for events: the server decides (cookieless id)
    return ev;
  }

  /** What the gateway reads on later calls when the page and the tracker share the site. */
  function setConsentCookie(flags) {
    if (!D) return;
    var c = 'CookieConsent=' + flags + '; Path=/; Max-Age=' + Math.floor(cfg.cookieDays * 86400) + '; SameSite=Lax';
    if (cfg.cookieDomain) c += '; Domain=' + cfg.cookieDomain;
    try {
      if (W.location.protocol === 'https:') c += '; Secure';
    } catch (e) {
      /* ignore */
    }
    D.cookie = c;
  }

  /**
   * Record a consent decision: agree({cflags: 1280, compliances: {...}}) or agree(1280).
   * Resolves to the server's JSON ({ok: true, vid}); rejects when it was not recorded.
   * Once recorded, the decision goes into the CookieConsent cookie (unless cookie: false, the
   * consentCookie option is off, or the visitor is private: the gateway sets none then either).
   */
  function agree(opts) {
    var extra = typeof opts === 'number' ? { cflags: opts } : Object.assign({}, opts);
    var flags = Number(extra.cflags);
    if (extra.cflags === null || extra.cflags === '' || !isFinite(flags) || Math.floor(flags) !== flags || flags < 0) {
      return Promise.reject(new Error('cflags (the consent flags, an integer) is required'));
    }
    var setCookie = extra.cookie === undefined ? cfg.consentCookie : toBool(extra.cookie, true);
    extra.cflags = flags;
    var body = JSON.stringify(consentBody(extra));
    return requestJson(ppiUrl('agree'), body).then(function (res) {
      if (setCookie && !isPrivate()) {
        try {
          setConsentCookie(flags);
        } catch (e) {
          debug('CookieConsent not set', e);
        }
      }
      if (res && res.vid) S.agreedVid = String(res.vid);
      return res;
    });
  }

  /** A visitor's consent records, newest first (default: the vid agree() was recorded under). */
  function consent(vid) {
    var v = vid || S.agreedVid || (isPrivate() ? '' : S.vid || cfg.vid);
    if (!v) return Promise.reject(new Error('no vid: pass one, or call agree() first'));
    return requestJson(ppiUrl('agree') + '?vid=' + encodeURIComponent(v));
  }

  function jurisdictions() {
    return requestJson(ppiUrl('jds'));
  }

  /* ------------------------------------------------------------------ WebSocket */
  function wsOpen() {
    return !!(S.ws && S.ws.readyState === 1);
  }

  function acking() {
    return cfg.wsAck && S.acksSupported;
  }

  /**
   * The socket URL. The gateway decides the connection's visitor at the upgrade (its vid cookie,
   * else the vid given here, else a new one it sets as the cookie), so the page's own vid goes in
   * the URL: then the cookie gets that vid, as on HTTP.
   */
  function wsEndpoint() {
    var q = [];
    if (cfg.wsAck) q.push('ack=1');
    var vid = isPrivate() ? '' : S.vid || cfg.vid;
    if (vid) q.push('vid=' + encodeURIComponent(String(vid)));
    return (
      cfg.endpoint.replace(/^http(s?):/i, 'ws$1:') + '/tr/v' + cfg.apiVersion + '/ws' + (q.length ? '?' + q.join('&') : '')
    );
  }

  function wsFailed() {
    S.wsFails++;
    if (S.wsFails >= cfg.wsMaxRetries) {
      S.wsDisabled = true;
      debug('WebSocket unavailable, staying on HTTP');
    }
    S.wsRetryAt = Date.now() + Math.min(30000, 1000 * Math.pow(2, S.wsFails - 1));
  }

  /** Events sent on a socket that closed before acking are queued again (HTTP). */
  function recoverInflight() {
    if (!S.inflight.size) return;
    var items = [];
    S.inflight.forEach(function (it) {
      items.push(it);
    });
    S.inflight.clear();
    S.queue = items.concat(S.queue);
    trimQueue();
  }

  function wsConnect() {
    // A socket's upgrade always carries the tracker's cookies (no credentials: 'omit' there):
    // an opted-out visitor stays on fetch without cookies.
    if (!cfg.ws || S.optedOut || S.wsDisabled || typeof W.WebSocket !== 'function') return;
    if (S.ws && (S.ws.readyState === 0 || S.ws.readyState === 1)) return;
    if (Date.now() < S.wsRetryAt) return;
    var sock;
    try {
      sock = new W.WebSocket(wsEndpoint());
      sock.binaryType = 'arraybuffer';
    } catch (e) {
      wsFailed();
      return;
    }
    S.ws = sock;
    S.wsUrl = wsEndpoint();
    var opened = false;
    sock.onopen = function () {
      if (S.ws !== sock) return;
      opened = true;
      S.wsFails = 0;
      debug('WebSocket open');
      flush();
    };
    sock.onmessage = function (e) {
      onWsMessage(e && e.data);
    };
    sock.onerror = noop; // close follows
    sock.onclose = function () {
      if (S.ws !== sock) return;
      S.ws = null;
      if (opened) S.wsFails = 0;
      wsFailed();
      recoverInflight();
      if (S.queue.length && S.inited) schedule(0);
    };
  }

  function onWsMessage(data) {
    if (typeof data !== 'string') return;
    var m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (!m || typeof m !== 'object') return;
    S.ackSeen = true;
    var ok = m.ok;
    if (typeof ok === 'string') ok = [ok];
    if (Array.isArray(ok)) {
      ok.forEach(function (eid) {
        S.inflight.delete(eid);
      });
    }
    // {"error": ...}: cannot tell which event; it stays in flight and goes over HTTP on timeout
    if (!S.inflight.size && S.ackTimer) {
      clearTimeout(S.ackTimer);
      S.ackTimer = null;
    }
  }

  function armAckTimer() {
    if (S.ackTimer) return;
    S.ackTimer = setTimeout(checkAcks, cfg.ackTimeout);
  }

  function checkAcks() {
    S.ackTimer = null;
    var now = Date.now();
    var stale = [];
    S.inflight.forEach(function (it, k) {
      if (now - it.sentAt >= cfg.ackTimeout) {
        stale.push(it);
        S.inflight.delete(k);
      }
    });
    if (stale.length) {
      if (!S.ackSeen) {
        S.acksSupported = false; // the server never answers: fire-and-forget from now on
        debug('no WebSocket acks, resending over HTTP');
      }
      postAll(stale);
    }
    if (S.inflight.size) armAckTimer();
  }

  function encodeFrame(json) {
    if (cfg.wsCompress && typeof TextEncoder !== 'undefined') return lz4Frame(new TextEncoder().encode(json));
    return json; // text frame
  }

  /** Send queued events one frame each while the socket is open; leftovers stay queued. */
  function wsSendQueue() {
    var sock = S.ws;
    while (S.queue.length && wsOpen() && sock.bufferedAmount < 1048576) {
      var it = S.queue[0];
      try {
        sock.send(encodeFrame(it.json));
      } catch (e) {
        return;
      }
      S.queue.shift();
      if (acking()) {
        it.sentAt = Date.now();
        S.inflight.set(it.eid, it);
        armAckTimer();
      }
    }
  }

  /* ------------------------------------------------------------------ flushing */
  function flush() {
    clearTimer();
    if (!S.inited || !S.queue.length) return Promise.resolve(true);
    if (cfg.ws) wsConnect();
    if (wsOpen()) wsSendQueue();
    if (!S.queue.length) return Promise.resolve(true);
    var wait = S.backoffUntil - Date.now();
    if (wait > 0) {
      schedule(wait);
      return Promise.resolve(false);
    }
    var ps = [];
    while (S.queue.length) ps.push(postBatch(S.queue.splice(0, cfg.batchSize), false));
    return Promise.all(ps).then(function (rs) {
      return rs.every(Boolean);
    });
  }

  /** Page is going away: everything queued or unacked leaves now, via sendBeacon. */
  function flushUnload() {
    clearTimer();
    var items = S.queue.splice(0);
    S.inflight.forEach(function (it) {
      items.push(it);
    });
    S.inflight.clear();
    if (!items.length) return;
    var chunk = [];
    var size = 2;
    items.forEach(function (it) {
      var len = byteLength(it.json) + 1;
      if (chunk.length && (size + len > 60000 || chunk.length >= 100)) {
        beacon(chunk);
        chunk = [];
        size = 2;
      }
      chunk.push(it);
      size += len;
    });
    if (chunk.length) beacon(chunk);
  }

  function beacon(items) {
    var body = bodyOf(items);
    var url = trUrl();
    // sendBeacon always carries cookies, so an opted-out visitor goes through fetch(omit)
    if (!S.optedOut && typeof N.sendBeacon === 'function' && typeof W.Blob === 'function') {
      try {
        if (N.sendBeacon(url, new W.Blob([body], { type: 'text/plain;charset=UTF-8' }))) return;
      } catch (e) {
        /* fall back to fetch */
      }
    }
    send(url, body, true).then(function (r) {
      handleResult(items, r);
    });
  }

  function onPageHide() {
    flushUnload();
    if (S.ws) {
      // lets the page enter the back/forward cache; reconnects on the next flush
      var sock = S.ws;
      S.ws = null;
      try {
        sock.close(1000);
      } catch (e) {
        /* ignore */
      }
    }
  }

  function listen() {
    try {
      W.addEventListener('pagehide', guard(onPageHide));
      W.addEventListener('online', guard(flush));
      if (D && D.addEventListener) {
        D.addEventListener(
          'visibilitychange',
          guard(function () {
            if (D.visibilityState === 'hidden') flushUnload();
          })
        );
      }
    } catch (e) {
      /* ignore */
    }
  }

  /* ------------------------------------------------------------------ public API */
  function guard(fn, fallback) {
    return function () {
      try {
        return fn.apply(null, arguments);
      } catch (e) {
        debug('internal error', e);
        return typeof fallback === 'function' ? fallback() : fallback;
      }
    };
  }

  function rejected() {
    return Promise.reject(new Error('sfpl internal error'));
  }

  function init(opts) {
    if (S.autoTimer) {
      clearTimeout(S.autoTimer);
      S.autoTimer = null;
    }
    var oldWs = cfg.ws ? wsEndpoint() : '';
    S.opts = Object.assign(S.opts, opts && typeof opts === 'object' ? opts : {}); // init() again adds to earlier options
    cfg = buildConfig(S.opts);
    if (S.ws && (!cfg.ws || wsEndpoint() !== oldWs)) {
      var sock = S.ws;
      S.ws = null;
      recoverInflight();
      try {
        sock.close(1000);
      } catch (e) {
        /* ignore */
      }
    }
    if (!S.inited) {
      S.inited = true;
      listen();
      if (cfg.ws) wsConnect();
      if (cfg.pageView) page();
    }
    if (S.queue.length) schedule(cfg.batchDelay);
    return api;
  }

  function track(ename, props) {
    if (ename && typeof ename === 'object') {
      props = ename;
      ename = props.ename;
    }
    return enqueue(buildEvent(ename, props));
  }

  function page(props) {
    var href = '';
    try {
      href = String(W.location.href);
    } catch (e) {
      href = '';
    }
    if (S.lastPage && S.lastPage !== href) S.last = S.lastPage; // single-page app navigation
    S.lastPage = href;
    return track('page_view', Object.assign({ etyp: 'view' }, props && typeof props === 'object' ? props : {}));
  }

  function identify(uid) {
    S.uid = uid === null || uid === undefined || uid === '' ? null : String(uid);
    return api;
  }

  function setVid(vid) {
    S.vid = vid === null || vid === undefined || vid === '' ? null : String(vid);
    return api;
  }

  function optOut() {
    S.optedOut = true;
    try {
      W.localStorage.setItem('sfpl_optout', '1');
    } catch (e) {
      /* ignore */
    }
    var st = storage();
    try {
      if (st) st.removeItem('sfpl_sid');
    } catch (e) {
      /* ignore */
    }
    if (S.ws) {
      var sock = S.ws; // its upgrade carried the cookies: events from now on go without them
      S.ws = null;
      recoverInflight();
      try {
        sock.close(1000);
      } catch (e) {
        /* ignore */
      }
    }
    return api;
  }

  function optIn() {
    S.optedOut = false;
    try {
      W.localStorage.removeItem('sfpl_optout');
    } catch (e) {
      /* ignore */
    }
    return api;
  }

  function getConfig() {
    return Object.assign({}, cfg, { wsConnected: wsOpen(), queued: S.queue.length });
  }

  var api = {
    __sfpl: true,
    version: VERSION,
    init: guard(init, function () {
      return api;
    }),
    track: guard(track, null),
    page: guard(page, null),
    identify: guard(identify, function () {
      return api;
    }),
    setVid: guard(setVid, function () {
      return api;
    }),
    optOut: guard(optOut, function () {
      return api;
    }),
    optIn: guard(optIn, function () {
      return api;
    }),
    isOptedOut: guard(isPrivate, false),
    flush: guard(
      function () {
        return flush().catch(function () {
          return false;
        });
      },
      function () {
        return Promise.resolve(false);
      }
    ),
    getConfig: guard(getConfig, null),
    agree: guard(agree, rejected),
    consent: guard(consent, rejected),
    jurisdictions: guard(jurisdictions, rejected),
    lz4: lz4
  };
  // snippet-style API: sfpl.push(["track", "signup", {...}])
  api.push = guard(function (call) {
    if (call && typeof call.length === 'number' && typeof api[call[0]] === 'function') {
      return api[call[0]].apply(null, Array.prototype.slice.call(call, 1));
    }
    return null;
  }, null);

  W.sfpl = api;
  if (W.tracker === undefined || Array.isArray(W.tracker)) {
    var preTracker = W.tracker;
    W.tracker = api;
    if (Array.isArray(preTracker)) preTracker.forEach(api.push);
  }
  if (Array.isArray(preQueue)) preQueue.forEach(api.push);

  if (!S.inited && toBool(attr('auto'), true)) {
    S.autoTimer = setTimeout(
      guard(function () {
        S.autoTimer = null;
        if (!S.inited) init({});
      }),
      0
    );
  }
})();
