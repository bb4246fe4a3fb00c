// Compress many inputs with static/track.js's LZ4 encoder and write them for the Python side
// (tests/test_static_js.py), which decompresses every frame with lz4.block.decompress.
//
// usage: node lz4_roundtrip.mjs <path/to/track.js> <out.bin>
// out.bin: repeated records  [u32 name length][name utf-8][u32 input length][input]
//                            [u32 frame length][frame]   (all lengths little-endian)
import fs from 'node:fs';
import { createRequire } from 'node:module';

const [trackPath, outPath] = process.argv.slice(2);
if (!trackPath || !outPath) {
  console.error('usage: node lz4_roundtrip.mjs <track.js> <out.bin>');
  process.exit(2);
}
const require = createRequire(import.meta.url);
const { lz4Frame } = require(fs.realpathSync(trackPath));
if (typeof lz4Frame !== 'function') throw new Error('track.js does not export lz4Frame under Node');

// deterministic PRNG (mulberry32) so failures are reproducible
let seed = 0x5eed1234;
function rnd() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const randInt = (n) => Math.floor(rnd() * n);
function randomBytes(n) {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = randInt(256);
  return b;
}
function smallAlphabet(n, k) {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = 97 + randInt(k);
  return b;
}
const enc = new TextEncoder();
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};
const repeat = (s, n) => enc.encode(s.repeat(n));

const cases = [];
const add = (name, data) => cases.push([name, data]);

add('empty', new Uint8Array(0));
for (let n = 1; n <= 40; n++) {
  add(`a_x${n}`, repeat('a', n)); // boundaries around MFLIMIT (12/13) and the 15 nibble
  add(`text_${n}`, smallAlphabet(n, 3));
}
add('abc_x9', repeat('abc', 9));
add('a_x10000', repeat('a', 10000));
add('abc_x5000', repeat('abc', 5000));
add('hello_json', enc.encode('{"ename":"page_view","etyp":"view","url":"https://example.com/"}'));
add('utf8', enc.encode('événement – 事件 – событие 🎉 '.repeat(50)));
add('random_1k', randomBytes(1024));
add('random_100k', randomBytes(100000));
// literal runs and matches whose lengths need several extra length bytes (15 + 255 + ...)
for (const L of [14, 15, 16, 269, 270, 271, 524, 525, 1000]) {
  add(`lit${L}_match${L}`, concat(randomBytes(L), repeat('z', L), randomBytes(20)));
  const r = randomBytes(L);
  add(`copy${L}`, concat(r, r, randomBytes(8)));
}
// offsets at the limit: a repeat 65535 back may be a match, 65536 back must not
for (const L of [65534, 65535, 65536, 70000]) {
  const r = randomBytes(L);
  add(`far_repeat_${L}`, concat(r, r.subarray(0, 5000), randomBytes(16)));
}
// ~200 KB of JSON events, the realistic payload
const events = [];
for (let i = 0; events.length < 660; i++) {
  events.push({
    eid: `0190f${String(i).padStart(3, '0')}-0000-7000-8000-${String(i).padStart(12, '0')}`,
    ename: ['page_view', 'add_to_cart', 'signup'][i % 3],
    etyp: 'view',
    url: `https://shop.example.com/products/${i}?ref=${randInt(1e6)}`,
    last: 'https://www.google.com/',
    tz: 'America/Los_Angeles',
    device: 'Desktop',
    os: 'macOS',
    w: 1280 + randInt(100),
    h: 720,
    props: { score: rnd(), tags: ['a', 'b', String(randInt(50))] },
  });
}
const bigJson = enc.encode(JSON.stringify(events));
add('json_200k', bigJson);
// fuzz: small alphabets (lots of overlapping matches), random sizes, spliced copies
for (let i = 0; i < 400; i++) {
  const n = randInt(i < 300 ? 300 : 5000);
  let b = smallAlphabet(n, 1 + randInt(4));
  if (n > 50 && rnd() < 0.5) {
    const s = randInt(n - 40);
    b = concat(b, b.subarray(s, s + 1 + randInt(40)), randomBytes(randInt(20)));
  }
  add(`fuzz_${i}`, b);
}

const chunks = [];
const u32 = (n) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
};
let totalIn = 0;
let totalOut = 0;
for (const [name, data] of cases) {
  const frame = lz4Frame(data);
  const nb = enc.encode(name);
  chunks.push(u32(nb.length), nb, u32(data.length), data, u32(frame.length), frame);
  totalIn += data.length;
  totalOut += frame.length;
}
fs.writeFileSync(outPath, concat(...chunks));
console.log(JSON.stringify({ cases: cases.length, bytesIn: totalIn, bytesOut: totalOut }));
