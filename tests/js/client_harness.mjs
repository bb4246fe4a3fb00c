// Runs static/track.js in isolated fake browsers (node:vm contexts with hand-written
// window/document/navigator shims) against a real HTTP server started by
// tests/test_static_js.py. Every scenario uses its own endpoint path prefix (/s1, /s2, ...)
// so the Python side can tell the POSTs apart. Prints one JSON report on stdout; the
// Python test makes the assertions on what its server received plus this report.
//
// usage: node client_harness.mjs <path/to/track.js> <http://127.0.0.1:PORT>
import fs from 'node:fs';
import vm from 'node:vm';
import { webcrypto } from 'node:crypto';

const [trackPath, base] = process.argv.slice(2);
if (!trackPath || !base) {
  console.error('usage: node client_harness.mjs <track.js> <base url>');
  process.exit(2);
}
const code = fs.readFileSync(trackPath, 'utf8');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const UA_IPHONE =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1';
const UA_MAC =
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36';

function makeStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => void m.set(k, String(v)),
    removeItem: (k) => void m.delete(k),
    dump: () => Object.fromEntries(m),
  };
}

function setLocation(loc, href) {
  const u = new URL(href);
  Object.assign(loc, {
    href: u.href,
    origin: u.origin,
    protocol: u.protocol,
    host: u.host,
    hostname: u.hostname,
    pathname: u.pathname,
    search: u.search,
    hash: u.hash,
  });
}

/**
 * A fake browser tab. opts: href, referrer, ua, gpc, attrs (data-* of the script tag),
 * src (script src), pre (window.sfpl before load), WebSocket, fetchImpl, beaconImpl.
 */
function browser(opts) {
  const rec = { fetches: [], beacons: [], pending: [], errors: [] };
  const listeners = { win: {}, doc: {} };
  const on = (tbl) => (type, fn) => void (tbl[type] = tbl[type] || []).push(fn);
  const location = {};
  setLocation(location, opts.href || 'https://site.example.com/');
  const attrs = opts.attrs || {};
  const realFetch = (url, init) => {
    rec.fetches.push({
      url: String(url),
      credentials: init && init.credentials,
      keepalive: !!(init && init.keepalive),
      headers: (init && init.headers) || null,
      bodyType: typeof (init && init.body),
    });
    const p = fetch(url, init);
    rec.pending.push(p.catch(() => {}));
    return p;
  };
  const navigator = {
    userAgent: opts.ua || UA_MAC,
    language: 'en-US',
    maxTouchPoints: 0,
    globalPrivacyControl: !!opts.gpc,
    sendBeacon:
      opts.beaconImpl ||
      function (url, data) {
        if (this !== navigator) throw new TypeError('Illegal invocation');
        rec.beacons.push({ url: String(url), type: data && data.type, size: data && data.size });
        // a real browser would queue it; here we really deliver it to the test server
        const p = data.text().then((text) =>
          fetch(url, { method: 'POST', body: text, headers: { 'content-type': data.type } }),
        );
        rec.pending.push(p.catch((e) => rec.errors.push(String(e))));
        return true;
      },
  };
  const document = {
    referrer: opts.referrer || '',
    visibilityState: 'visible',
    cookie: '',
    documentElement: { clientWidth: 390, clientHeight: 844 },
    currentScript: {
      src: opts.src || 'https://cdn.example.com/track.js',
      getAttribute: (name) => {
        const k = name.replace(/^data-/, '');
        return Object.prototype.hasOwnProperty.call(attrs, k) ? attrs[k] : null;
      },
    },
    addEventListener: on(listeners.doc),
  };
  const win = {
    location,
    navigator,
    document,
    innerWidth: 390,
    innerHeight: 844,
    sessionStorage: makeStorage(),
    localStorage: makeStorage(),
    crypto: webcrypto,
    console,
    setTimeout,
    clearTimeout,
    URL,
    Blob,
    TextEncoder,
    fetch: opts.fetchImpl ? opts.fetchImpl(realFetch) : realFetch,
    addEventListener: on(listeners.win),
  };
  if (opts.WebSocket) win.WebSocket = opts.WebSocket;
  if (opts.pre) win.sfpl = opts.pre;
  win.window = win;
  vm.createContext(win);
  vm.runInContext(code, win, { filename: 'track.js' });
  return {
    win,
    rec,
    get sfpl() {
      return win.sfpl;
    },
    fire(type) {
      for (const fn of listeners.win[type] || []) fn({ type, persisted: false });
    },
    hide() {
      document.visibilityState = 'hidden';
      for (const fn of listeners.doc.visibilitychange || []) fn({ type: 'visibilitychange' });
    },
    navigate(href) {
      setLocation(location, href);
    },
    async settle() {
      // wait for every request started so far (and those they start) to finish
      for (let i = 0; i < 5; i++) {
        const n = rec.pending.length;
        await Promise.all(rec.pending);
        if (rec.pending.length === n) break;
      }
    },
  };
}

/** Fake WebSocket: records frames; the scenario decides when it opens, acks or closes. */
function fakeSocketClass(behaviour) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      if (behaviour.throwOnConstruct) throw new Error('blocked');
      this.url = url;
      this.readyState = 0;
      this.bufferedAmount = 0;
      this.frames = [];
      this.closedWith = null;
      sockets.push(this);
      setTimeout(() => {
        if (behaviour.fail) {
          this.readyState = 3;
          if (this.onerror) this.onerror({ type: 'error' });
          if (this.onclose) this.onclose({ code: 1006 });
        } else {
          this.readyState = 1;
          if (this.onopen) this.onopen({ type: 'open' });
        }
      }, behaviour.delay || 5);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('InvalidStateError');
      const bin = typeof data !== 'string';
      this.frames.push(bin ? Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('hex') : data);
      this.binary = bin;
    }
    ack(eids) {
      if (this.onmessage) this.onmessage({ data: JSON.stringify({ ok: eids }) });
    }
    drop() {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code: 1006 });
    }
    close(code) {
      this.closedWith = code;
      this.readyState = 3;
    }
  }
  return { FakeWebSocket, sockets };
}

const ep = (s) => `${base}/${s}`;

// Waits (at most ~2 s) for the client's socket to be open. Not a fixed sleep: the scenarios
// start together, and while one runs synchronously Node may fire a later sleep's timer before
// the fake socket's own opening timer (timers of one duration fire as a group).
async function socketOpen(b) {
  for (let i = 0; i < 200 && !b.sfpl.getConfig().wsConnected; i++) await sleep(10);
}
const uuid = (n) => `0190aaaa-bbbb-7ccc-8ddd-${String(n).padStart(12, '0')}`;

const scenarios = {
  // auto-init from data- attributes, page view with utm mapping; identify; custom event; SPA page view
  async s1() {
    const b = browser({
      href: 'https://shop.example.com/products/42?utm_source=Newsletter&utm_medium=email&utm_campaign=spring_sale&utm_content=Banner%20A&ref=abc',
      referrer: 'https://www.google.com/',
      ua: UA_IPHONE,
      attrs: { endpoint: ep('s1'), app: 'shop', rel: '2024.05', 'batch-delay': '80', ptyp: 'product' },
    });
    // auto-init after the script ran, page_view after batchDelay: wait for that POST (a
    // loaded machine can take longer than the delay) so the custom event gets its own POST
    for (let i = 0; i < 100 && b.rec.fetches.length === 0; i++) await sleep(50);
    await b.settle();
    b.sfpl.identify('0190aaaa-0000-7000-8000-000000000001');
    const eid = b.sfpl.track('add_to_cart', { sku: 'A1', qty: 2 });
    await b.sfpl.flush();
    b.navigate('https://shop.example.com/products/43');
    b.sfpl.page({ ptyp: 'product' });
    await b.sfpl.flush();
    await b.settle();
    return { customEid: eid, fetches: b.rec.fetches, storage: b.win.sessionStorage.dump() };
  },

  // 25 events -> one POST of 20 at once, one of 5 after the delay
  async s2() {
    const b = browser({ attrs: { endpoint: ep('s2'), auto: 'false' } });
    b.sfpl.init({ pageView: false, batchDelay: 150 });
    for (let i = 0; i < 25; i++) b.sfpl.track(`e${i}`, { i });
    const immediately = b.rec.fetches.length;
    await sleep(400);
    await b.settle();
    return { postsImmediately: immediately, fetches: b.rec.fetches.length };
  },

  // pagehide -> sendBeacon with a text/plain Blob, nothing left for fetch
  async s3() {
    const b = browser({ attrs: { endpoint: ep('s3'), auto: 'false' } });
    b.sfpl.init({ pageView: false, batchDelay: 60000 });
    for (let i = 0; i < 3; i++) b.sfpl.track(`leave${i}`);
    b.fire('pagehide');
    await b.settle();
    return { beacons: b.rec.beacons, fetches: b.rec.fetches.length, queued: b.sfpl.getConfig().queued };
  },

  // visibilitychange -> hidden also flushes with sendBeacon
  async s3b() {
    const b = browser({ attrs: { endpoint: ep('s3b'), auto: 'false' } });
    b.sfpl.init({ pageView: false, batchDelay: 60000 });
    b.sfpl.track('hidden0');
    b.hide();
    await b.settle();
    return { beacons: b.rec.beacons, fetches: b.rec.fetches.length };
  },

  // sendBeacon refusing (returns false) -> fetch keepalive fallback
  async s3c() {
    const b = browser({ attrs: { endpoint: ep('s3c'), auto: 'false' }, beaconImpl: () => false });
    b.sfpl.init({ pageView: false, batchDelay: 60000 });
    b.sfpl.track('refused0');
    b.fire('pagehide');
    await b.settle();
    return { fetches: b.rec.fetches };
  },

  // Global Privacy Control: no vid even though the page set one, no stored session id
  async s4() {
    const b = browser({ gpc: true, attrs: { endpoint: ep('s4'), auto: 'false' } });
    b.sfpl.init({ vid: uuid(4), batchDelay: 30 });
    await sleep(150);
    await b.settle();
    return { storage: b.win.sessionStorage.dump(), optedOut: b.sfpl.isOptedOut() };
  },

  // no GPC: the page's vid is sent
  async s4b() {
    const b = browser({ attrs: { endpoint: ep('s4b'), vid: uuid(41), auto: 'false' } });
    b.sfpl.init({ batchDelay: 30 });
    await sleep(150);
    await b.settle();
    return { storage: b.win.sessionStorage.dump(), optedOut: b.sfpl.isOptedOut() };
  },

  // optOut(): no vid, cookies omitted, pagehide goes through fetch(credentials: omit)
  async s4c() {
    const b = browser({ attrs: { endpoint: ep('s4c'), auto: 'false' } });
    b.sfpl.optOut();
    b.sfpl.setVid(uuid(42));
    b.sfpl.init({ batchDelay: 30 });
    await sleep(150);
    await b.settle();
    b.sfpl.track('bye');
    b.fire('pagehide');
    await b.settle();
    return {
      fetches: b.rec.fetches,
      beacons: b.rec.beacons.length,
      optedOut: b.sfpl.isOptedOut(),
      persisted: b.win.localStorage.dump(),
    };
  },

  // WebSocket that never opens -> everything over HTTP
  async s5() {
    const { FakeWebSocket, sockets } = fakeSocketClass({ fail: true });
    const b = browser({ attrs: { endpoint: ep('s5'), auto: 'false' }, WebSocket: FakeWebSocket });
    b.sfpl.init({ ws: true, batchDelay: 50 });
    b.sfpl.track('ws_down_1');
    b.sfpl.track('ws_down_2');
    await sleep(300);
    await b.settle();
    return { wsUrls: sockets.map((s) => s.url), frames: sockets.map((s) => s.frames.length) };
  },

  // open socket: LZ4 frames; 3 acked, socket drops -> the 2 unacked go over HTTP
  async s6() {
    const { FakeWebSocket, sockets } = fakeSocketClass({});
    const b = browser({ attrs: { endpoint: ep('s6'), auto: 'false', ws: '' }, WebSocket: FakeWebSocket });
    b.sfpl.init({ pageView: false, batchDelay: 50 });
    await socketOpen(b);
    const connected = b.sfpl.getConfig().wsConnected;
    const eids = [1, 2, 3, 4, 5].map((i) => uuid(600 + i));
    eids.forEach((eid, i) => b.sfpl.track('ws_evt', { eid, n: i }));
    const httpBeforeDrop = b.rec.fetches.length;
    const s = sockets[0];
    s.ack(eids.slice(0, 3));
    s.drop();
    await sleep(200);
    await b.settle();
    return {
      connected,
      eids,
      wsUrls: sockets.map((x) => x.url),
      frames: s.frames,
      binary: s.binary,
      httpBeforeDrop,
    };
  },

  // server that never acks: resend over HTTP after ackTimeout, then fire-and-forget
  async s8() {
    const { FakeWebSocket, sockets } = fakeSocketClass({});
    const b = browser({ attrs: { endpoint: ep('s8'), auto: 'false' }, WebSocket: FakeWebSocket });
    b.sfpl.init({ ws: true, pageView: false, ackTimeout: 150, batchDelay: 30 });
    await socketOpen(b);
    b.sfpl.track('before_timeout', { eid: uuid(801) });
    await sleep(400);
    await b.settle();
    b.sfpl.track('after_timeout', { eid: uuid(802) });
    await sleep(300);
    await b.settle();
    return { frames: sockets.map((s) => s.frames.length) };
  },

  // pagehide with an open socket: unacked events leave via sendBeacon, socket closed
  async s8b() {
    const { FakeWebSocket, sockets } = fakeSocketClass({});
    const b = browser({ attrs: { endpoint: ep('s8b'), auto: 'false' }, WebSocket: FakeWebSocket });
    b.sfpl.init({ ws: true, pageView: false, ackTimeout: 60000, batchDelay: 30 });
    await socketOpen(b);
    b.sfpl.track('unacked', { eid: uuid(811) });
    b.fire('pagehide');
    await b.settle();
    return { frames: sockets[0].frames.length, beacons: b.rec.beacons.length, closedWith: sockets[0].closedWith };
  },

  // 503 (Retry-After: 0) on the first POST: same events (same eids) are sent again
  async s7() {
    const b = browser({ attrs: { endpoint: ep('s7'), auto: 'false' } });
    b.sfpl.init({ pageView: false, batchDelay: 30 });
    b.sfpl.track('retry_a');
    b.sfpl.track('retry_b');
    await sleep(400);
    await b.settle();
    return { fetches: b.rec.fetches.length };
  },

  // hostile environment: nothing may escape into the page
  async s9() {
    const thrown = [];
    const { FakeWebSocket } = fakeSocketClass({ throwOnConstruct: true });
    let b;
    try {
      b = browser({
        attrs: { endpoint: ep('s9'), auto: 'false' },
        WebSocket: FakeWebSocket,
        fetchImpl: () => () => {
          throw new Error('fetch blocked by extension');
        },
        beaconImpl: () => {
          throw new Error('beacon blocked');
        },
      });
    } catch (e) {
      thrown.push('load: ' + e);
      return { thrown };
    }
    const s = b.sfpl;
    const circular = { a: 1 };
    circular.self = circular;
    const results = {};
    const calls = [
      ['init', () => s.init('garbage')],
      ['init2', () => s.init({ ws: true, batchSize: 'lots', batchDelay: -5, endpoint: 42 })],
      ['circular', () => (results.circular = s.track('c', circular))],
      ['bigint', () => (results.bigint = s.track('b', { n: 10n }))],
      ['noargs', () => s.track()],
      ['identify', () => s.identify({ weird: true })],
      ['page', () => s.page(42)],
      ['push', () => s.push(['nope'])],
      ['flush', () => s.flush()],
      ['pagehide', () => b.fire('pagehide')],
      ['hidden', () => b.hide()],
    ];
    for (const [name, fn] of calls) {
      try {
        const r = fn();
        if (r && typeof r.then === 'function') await r;
      } catch (e) {
        thrown.push(`${name}: ${e}`);
      }
    }
    await sleep(100);
    return { thrown, results };
  },

  // snippet queue replayed: window.sfpl = [["init", ...], ["track", ...]] before the script
  async s10() {
    const b = browser({
      attrs: {},
      pre: [
        ['init', { endpoint: ep('s10'), pageView: false, batchDelay: 30 }],
        ['track', 'queued_evt', { a: 1 }],
      ],
    });
    await sleep(150);
    await b.settle();
    return { isApi: typeof b.sfpl.track === 'function', tracker: b.win.tracker === b.win.sfpl };
  },

  // endpoint and API version from the script's own URL (served by the tracker's /pub/)
  async s11() {
    const b = browser({ src: `${base}/s11/tr/v3/pub/track.js`, attrs: { 'batch-delay': '30' } });
    await sleep(150);
    await b.settle();
    return { config: b.sfpl.getConfig() };
  },
};

const report = {};
const names = Object.keys(scenarios);
const results = await Promise.allSettled(names.map((n) => scenarios[n]()));
results.forEach((r, i) => {
  report[names[i]] = r.status === 'fulfilled' ? r.value : { harnessError: String(r.reason && r.reason.stack) };
});
process.stdout.write(JSON.stringify(report) + '\n');
// no lingering timers may keep us alive (the client's long batch timers are unref'd by exit)
process.exit(0);
