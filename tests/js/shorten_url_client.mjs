// Runs the API part of static/shorten_url.html (<script id="api">) against a real gateway, as
// the page's Shorten button does, and prints what each step answered, as JSON.
// usage: node shorten_url_client.mjs <page.html> <tracker base URL> <uid> <key> <host>
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';

const [htmlPath, tracker, uid, key, host] = process.argv.slice(2);
const html = fs.readFileSync(htmlPath, 'utf8');
const m = /<script id="api">([\s\S]*?)<\/script>/.exec(html);
if (!m) throw new Error('no <script id="api"> in ' + htmlPath);
// Only what a browser page has: fetch, btoa (no DOM: the API part must be pure).
const ctx = vm.createContext({ fetch, btoa, unescape, encodeURIComponent, JSON, Promise, parseInt, String });
// the scripts the page loads first (shortlinks.js: the API client), then its own
for (const [, src] of html.matchAll(/<script src="([^"]+)"><\/script>/g)) {
  const file = path.join(path.dirname(htmlPath), src);
  vm.runInContext(fs.readFileSync(file, 'utf8'), ctx, { filename: src });
}
vm.runInContext(m[1], ctx, { filename: 'shorten_url.html#api' });

const settle = (p) => p.then((data) => ({ ok: true, data }), (e) => ({ ok: false, status: e.status || null, error: e.message }));
const out = {};
out.request = ctx.shortenRequest({ url: 'https://www.example.com/landing?offer=spring', redirector: host, path: 'spring' });
out.invalid = ctx.shortenRequest({ url: 'x', redirector: '', path: '' });
const api = ctx.adminApi({ tracker, uid, key });
out.save = await settle(api.save(out.request.body));
out.list = await settle(api.list(out.request.host));
out.wrong = await settle(ctx.adminApi({ tracker, uid, key: key + 'x' }).save(out.request.body));
process.stdout.write(JSON.stringify(out) + '\n');
