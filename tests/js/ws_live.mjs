// Runs static/track.js in a minimal fake browser (node:vm) whose WebSocket and fetch are
// Node's real ones, against a real gateway started by tests/test_ws_client.py. Needs
// `node --experimental-websocket` on Node 20 (WebSocket is global from Node 22).
//
// usage: node --experimental-websocket ws_live.mjs <track.js> <http://127.0.0.1:PORT> <n>
// Prints one JSON report: per mode (lz4, text) the eids tracked, the HTTP fetches the client
// made (none when every event was acked over the socket) and whether the socket was open.
import fs from 'node:fs';
import { runTrackJs } from './fake_browser.mjs';

const [trackPath, base, count] = process.argv.slice(2);
const code = fs.readFileSync(trackPath, 'utf8');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function browser() {
  const fetches = [];
  const noop = () => {};
  const document = {
    referrer: '',
    visibilityState: 'visible',
    cookie: '',
    documentElement: { clientWidth: 1280, clientHeight: 800 },
    currentScript: { src: `${base}/tr/v1/pub/track.js`, getAttribute: (n) => (n === 'data-auto' ? 'false' : null) },
    addEventListener: noop,
  };
  const win = runTrackJs(code, {
    location: { href: 'https://shop.example.com/cart', origin: 'https://shop.example.com', protocol: 'https:', host: 'shop.example.com', hostname: 'shop.example.com', pathname: '/cart', search: '', hash: '' },
    navigator: { userAgent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0', language: 'en-US', maxTouchPoints: 0 },
    document,
    WebSocket,
    fetch: (url, init) => {
      fetches.push(String(url));
      return fetch(url, init);
    },
  });
  return { sfpl: win.sfpl, fetches };
}

const report = {};
for (const mode of ['lz4', 'text']) {
  const b = browser();
  b.sfpl.init({ endpoint: base, ws: true, wsCompress: mode === 'lz4', pageView: false, batchDelay: 20, ackTimeout: 1500 });
  // init opens the socket; events queued before it is open would go over HTTP (by design)
  let open = false;
  for (let i = 0; i < 200 && !open; i++) {
    await sleep(25);
    open = b.sfpl.getConfig().wsConnected;
  }
  const eids = [];
  for (let i = 0; i < Number(count); i++) eids.push(b.sfpl.track(`live_${mode}`, { i, mode }));
  // longer than ackTimeout: an event without an ack would be POSTed over HTTP by now
  await sleep(2500);
  report[mode] = { eids, fetches: b.fetches, open, queued: b.sfpl.getConfig().queued };
}
console.log(JSON.stringify(report));
process.exit(0);
