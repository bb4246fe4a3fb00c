// Runs the pure link builder static/track_url.js for the inputs given as JSON on argv[3] and
// prints the results as JSON.
// usage: node track_url_builder.mjs <track_url.js> '<json array of inputs>'
import fs from 'node:fs';
import vm from 'node:vm';

const [scriptPath, inputs] = process.argv.slice(2);
const ctx = vm.createContext({ URL }); // no window, no document: the builder must be pure
vm.runInContext(fs.readFileSync(scriptPath, 'utf8'), ctx, { filename: scriptPath });
const out = JSON.parse(inputs).map((input) => ctx.buildTrackedLinks(input));
process.stdout.write(JSON.stringify(out) + '\n');
