// Runs the pure link builder of static/track_url.html (<script id="builder">) for the inputs
// given as JSON on argv[3] and prints the results as JSON.
// usage: node track_url_builder.mjs <track_url.html> '<json array of inputs>'
import fs from 'node:fs';
import vm from 'node:vm';

const [htmlPath, inputs] = process.argv.slice(2);
const html = fs.readFileSync(htmlPath, 'utf8');
const m = /<script id="builder">([\s\S]*?)<\/script>/.exec(html);
if (!m) throw new Error('no <script id="builder"> in ' + htmlPath);
const ctx = vm.createContext({ URL }); // no window, no document: the builder must be pure
vm.runInContext(m[1], ctx, { filename: 'track_url.html#builder' });
const out = JSON.parse(inputs).map((input) => ctx.buildTrackedLinks(input));
process.stdout.write(JSON.stringify(out) + '\n');
