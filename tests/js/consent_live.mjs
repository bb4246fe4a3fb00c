// Runs static/track.js's consent helpers (agree, consent, jurisdictions) in a minimal fake
// browser (node:vm) whose fetch is Node's real one, against a real gateway started by
// tests/test_consent_client.py (RequireConsent on).
//
// usage: node consent_live.mjs <track.js> <http://127.0.0.1:PORT>
// Prints one JSON report. The page is served from the gateway's own origin, so the fake browser
// sends the page's cookies (document.cookie, a small jar) with every request to the gateway, as
// a browser does for a first-party tracker. The gateway's own Set-Cookie headers are NOT kept:
// whatever consent later calls carry is what track.js itself wrote to document.cookie.
import fs from 'node:fs';
import { runTrackJs } from './fake_browser.mjs';

const [trackPath, base] = process.argv.slice(2);
const code = fs.readFileSync(trackPath, 'utf8');

function browser({ gpc = false } = {}) {
  const jar = new Map();
  const cookieWrites = [];
  const requests = [];
  const noop = () => {};
  const document = {
    referrer: '',
    visibilityState: 'visible',
    get cookie() {
      return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    },
    set cookie(raw) {
      cookieWrites.push(raw);
      const [pair, ...attrs] = raw.split(';').map((s) => s.trim());
      const i = pair.indexOf('=');
      const maxAge = attrs.find((a) => /^max-age=/i.test(a));
      if (maxAge && Number(maxAge.split('=')[1]) <= 0) jar.delete(pair.slice(0, i));
      else jar.set(pair.slice(0, i), pair.slice(i + 1));
    },
    documentElement: { clientWidth: 1280, clientHeight: 800 },
    currentScript: { src: `${base}/tr/v1/pub/track.js`, getAttribute: (n) => (n === 'data-auto' ? 'false' : null) },
    addEventListener: noop,
  };
  const page = new URL(`${base}/shop/consent?utm_source=Newsletter&utm_campaign=Spring`);
  const win = runTrackJs(code, {
    location: {
      href: page.href,
      origin: page.origin,
      protocol: page.protocol,
      host: page.host,
      hostname: page.hostname,
      pathname: page.pathname,
      search: page.search,
      hash: '',
    },
    navigator: {
      userAgent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0',
      language: 'en-US',
      maxTouchPoints: 0,
      globalPrivacyControl: gpc,
    },
    document,
    fetch: (url, init = {}) => {
      const headers = new Headers(init.headers || {});
      const cookie = document.cookie;
      if (cookie && init.credentials !== 'omit') headers.set('Cookie', cookie);
      if (gpc) headers.set('Sec-GPC', '1'); // what a GPC browser sends with every request
      requests.push({
        url: String(url),
        method: init.method || 'GET',
        credentials: init.credentials,
        cookie: headers.get('Cookie'),
        body: typeof init.body === 'string' ? init.body : null,
      });
      return fetch(url, { ...init, headers, keepalive: false });
    },
  });
  win.sfpl.init({ endpoint: base, pageView: false, batchDelay: 10, app: 'shop', rel: '2026.11' });
  return { sfpl: win.sfpl, requests, cookieWrites, jar };
}

const settle = (p) =>
  p.then(
    (value) => ({ value }),
    (e) => ({ error: String(e.message), status: e.status, body: e.body })
  );

// records reach the store shortly after the 200 (spool -> store): poll, at most ~15 s
async function readBack(sfpl, n) {
  let got;
  for (let i = 0; i < 75; i++) {
    got = await settle(sfpl.consent());
    if (got.error || got.value.length >= n) return got;
    await new Promise((r) => setTimeout(r, 200));
  }
  return got;
}

const PAGE_VID = '0190aaaa-bbbb-7ccc-8ddd-00000000c001';
const GPC_VID = '0190aaaa-bbbb-7ccc-8ddd-00000000c002';
const report = {};

// 1. consent given, then withdrawn; tracking before, between and after
{
  const b = browser();
  b.sfpl.setVid(PAGE_VID);
  const before = b.sfpl.track('before_consent');
  await b.sfpl.flush();
  const agreed = await settle(b.sfpl.agree({ cflags: 1280, compliances: { banner: 'v3' }, culture: 'en-US' }));
  const cookieAfterAgree = b.jar.get('CookieConsent');
  const after = b.sfpl.track('after_consent');
  await b.sfpl.flush();
  const withdrawn = await settle(b.sfpl.agree(256));
  const afterWithdrawal = b.sfpl.track('after_withdrawal');
  await b.sfpl.flush();
  const records = await readBack(b.sfpl, 2);
  const jds = await settle(b.sfpl.jurisdictions());
  const badVid = await settle(b.sfpl.consent('not-a-uuid'));
  const noFlags = await settle(b.sfpl.agree({ flags: 1280 }));
  report.consented = {
    eids: { before, after, afterWithdrawal },
    agreed,
    withdrawn,
    cookieAfterAgree,
    records,
    jds,
    badVid,
    noFlags,
    cookieWrites: b.cookieWrites,
    requests: b.requests,
  };
}

// 2. Global Privacy Control: no vid sent, no cookie written
{
  const b = browser({ gpc: true });
  b.sfpl.setVid(GPC_VID);
  const agreed = await settle(b.sfpl.agree({ cflags: 1280 }));
  const records = await readBack(b.sfpl, 1);
  report.gpc = { agreed, records, cookieWrites: b.cookieWrites, requests: b.requests };
}

// 3. the site keeps the cookie itself: cookie: false
{
  const b = browser();
  const agreed = await settle(b.sfpl.agree({ cflags: 3328, cookie: false }));
  report.nocookie = { agreed, cookieWrites: b.cookieWrites, requests: b.requests };
}

console.log(JSON.stringify(report));
process.exit(0);
