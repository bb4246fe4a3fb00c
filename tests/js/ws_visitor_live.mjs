// Page loads of static/track.js in WebSocket mode (data-ws="true") against a real gateway
// started by tests/test_ws_visitor_client.py, in a fake browser that keeps the tracker's cookies
// as a browser does: sent with fetch and with the WebSocket upgrade, and taken from their
// answers, the 101 of the upgrade included (tests/js/fake_browser.mjs).
//
// usage: node ws_visitor_live.mjs <track.js> <http://127.0.0.1:PORT>
// Prints one JSON report: per visitor, per page load, the eids tracked (over the socket, then
// one over HTTP once the socket is closed), the HTTP requests made, the sockets opened and the
// vid cookie the browser holds afterwards.
import fs from 'node:fs';
import { browserFetch, browserWebSocket, cookieJar, runTrackJs } from './fake_browser.mjs';

const [trackPath, base] = process.argv.slice(2);
const code = fs.readFileSync(trackPath, 'utf8');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const UA = 'Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0';
const noop = () => {};

function browser(cookies, { gpc = false, storage = new Map() } = {}) {
  // what a browser sends with every request, the upgrade included
  const headers = { 'User-Agent': UA, ...(gpc ? { 'Sec-GPC': '1' } : {}) };
  const requests = [];
  const sockets = [];
  const store = {
    getItem: (k) => (storage.has(k) ? storage.get(k) : null),
    setItem: (k, v) => storage.set(k, String(v)),
    removeItem: (k) => storage.delete(k),
  };
  const page = new URL(`${base}/shop/cart`);
  const win = runTrackJs(code, {
    location: { href: page.href, origin: page.origin, protocol: page.protocol, host: page.host, hostname: page.hostname, pathname: page.pathname, search: '', hash: '' },
    navigator: { userAgent: UA, language: 'en-US', maxTouchPoints: 0, globalPrivacyControl: gpc },
    document: {
      referrer: '',
      visibilityState: 'visible',
      cookie: '',
      documentElement: { clientWidth: 1280, clientHeight: 800 },
      currentScript: { src: `${base}/tr/v1/pub/track.js`, getAttribute: (n) => (n === 'data-auto' ? 'false' : null) },
      addEventListener: noop,
    },
    localStorage: store,
    WebSocket: browserWebSocket(cookies, headers, sockets),
    fetch: browserFetch(cookies, headers, requests),
  });
  return { sfpl: win.sfpl, requests, sockets };
}

async function pageLoad(cookies, { setVid = null, optOut = false, ...opts } = {}) {
  const b = browser(cookies, opts);
  if (setVid) b.sfpl.setVid(setVid);
  if (optOut) b.sfpl.optOut();
  b.sfpl.init({ endpoint: base, ws: true, pageView: false, batchDelay: 20, ackTimeout: 5000 });
  const optedOut = opts.storage.get('sfpl_optout') === '1'; // no socket is opened then
  let open = false;
  for (let i = 0; i < 200 && !open && !optedOut; i++) {
    await sleep(25);
    open = b.sfpl.getConfig().wsConnected;
  }
  const eids = [b.sfpl.page(), b.sfpl.track('add_to_cart', { sku: 'A1' }), b.sfpl.track('checkout')];
  await b.sfpl.flush();
  await sleep(500); // the acks
  // the page goes on over HTTP (the socket closed): the same visitor, as a browser would be
  b.sfpl.init({ ws: false });
  eids.push(b.sfpl.track('after_socket'));
  await b.sfpl.flush();
  return {
    eids,
    open,
    sockets: b.sockets.length,
    upgradeCookies: b.sockets.map((s) => s.setCookies || []),
    requests: b.requests,
    vidCookie: cookies.jar.get('vid') ?? null,
  };
}

const report = {};
for (const [name, opts] of [
  ['first_time', {}],
  ['gpc', { gpc: true }],
  ['page_vid', { setVid: '0190aaaa-bbbb-7ccc-8ddd-00000000d001' }],
  ['opted_out', { optOut: true }],
]) {
  const cookies = cookieJar(); // one browser profile: its cookies last across its page loads
  const storage = new Map(); // and its localStorage (the opt-out)
  report[name] = [];
  for (let load = 0; load < 2; load++) {
    report[name].push(await pageLoad(cookies, { ...opts, storage, optOut: opts.optOut && load === 0 }));
  }
}
console.log(JSON.stringify(report));
process.exit(0);
