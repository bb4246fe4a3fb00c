// Runs the admin-API client of static/shorten.html (<script id="api">) against a real gateway
// and prints what each step answered, as JSON.
// usage: node shorten_client.mjs <shorten.html> <tracker base URL> <token> <uid> <secret> <host>
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';

const [htmlPath, tracker, token, uid, secret, host] = process.argv.slice(2);
const html = fs.readFileSync(htmlPath, 'utf8');
const m = /<script id="api">([\s\S]*?)<\/script>/.exec(html);
if (!m) throw new Error('no <script id="api"> in ' + htmlPath);
// Only what a browser page has: fetch, URL, btoa (no DOM: the client must be pure).
const ctx = vm.createContext({ fetch, URL, btoa, unescape, encodeURIComponent, JSON, Promise, Date, isNaN, parseInt, String });
// the scripts the page loads first (shortlinks.js: the API client), then its own
for (const [, src] of html.matchAll(/<script src="([^"]+)"><\/script>/g)) {
  const file = path.join(path.dirname(htmlPath), src);
  vm.runInContext(fs.readFileSync(file, 'utf8'), ctx, { filename: src });
}
vm.runInContext(m[1], ctx, { filename: 'shorten.html#api' });

const out = {};
const settle = (p) => p.then((data) => ({ ok: true, data }), (e) => ({ ok: false, status: e.status || null, error: e.message }));

out.bodies = [
  ctx.linkBody({ urlfrom: `https://${host}/a`, urlto: 'https://example.com/a', status: '301', expires: '', forward_query: true }),
  ctx.linkBody({ urlfrom: '', urlto: 'ftp://x' }),
  ctx.linkBody({ urlfrom: `${host}/b`, urlto: 'https://example.com/b', expires: '2099-01-02T03:04' }),
];
const withToken = ctx.shortLinkClient({ tracker, token });
const withPair = ctx.shortLinkClient({ tracker, uid, secret });
out.saveToken = await settle(withToken.save(out.bodies[0].body));
out.saveBad = await settle(withToken.save({ urlfrom: `${host}/c`, urlto: 'https://example.com/', status: 303 }));
out.savePair = await settle(withPair.save({ urlfrom: `${host}/b`, urlto: 'https://example.com/b', expires: null }));
out.listBefore = await settle(withToken.list(host));
out.remove = await settle(withPair.remove(`https://${host}/a`));
out.listAfter = await settle(withPair.list(host));
out.wrong = await settle(ctx.shortLinkClient({ tracker, token: uid + '.wrong-secret' }).list(host));
out.none = await settle(ctx.shortLinkClient({ tracker }).list(host));
process.stdout.write(JSON.stringify(out) + '\n');
