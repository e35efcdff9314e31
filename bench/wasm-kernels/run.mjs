// Times the convolution layers in wasm, one thread, alternating: gemm's product, the register
// tiles, and the tiles with Winograd for the 3x3 stride-1 layers, packing the weights on each call
// and (`-prepacked`, as a loaded model does) once (`Product` and
// WINOGRAD_MIN_CHANNELS in src/kernels/ and src/model/folded.rs). Build and run:
//   cd bench/wasm-kernels
//   RUSTFLAGS="-C target-feature=+simd128" cargo build --release --target wasm32-unknown-unknown
//   node run.mjs target/wasm32-unknown-unknown/release/wasm_kernels.wasm [per-layer]
// (Winograd here for every 3x3 stride-1 layer; add +relaxed-simd to RUSTFLAGS and run node with
// --experimental-wasm-relaxed-simd for the fused multiply-add.)
import fs from 'node:fs';
const file = process.argv[2];
const { instance } = await WebAssembly.instantiate(fs.readFileSync(file), {});
const run = instance.exports.run;
const med = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
for (let i = 0; i < 5; i++) { run(0, -1); run(1, -1); }
const modes = [[0, 'gemm'], [1, 'tiles'], [2, 'wino'], [3, 'tiles-prepacked'], [4, 'wino-prepacked']];
const res = Object.fromEntries(modes.map(([, name]) => [name, []]));
for (let i = 0; i < 15; i++) for (const [p, name] of modes) { const t = performance.now(); run(p, -1); res[name].push(performance.now() - t); }
console.log('all layers:', modes.map(([, name]) => `${name} ${med(res[name]).toFixed(2)}`).join(', '));
if (process.argv[3]) for (let l = 0; l < 11; l++) {
  const r = { 0: [], 1: [], 2: [] };
  for (let i = 0; i < 9; i++) for (const p of [0, 1, 2]) { const t = performance.now(); run(p, l); r[p].push(performance.now() - t); }
  console.log('layer', l, 'gemm', med(r[0]).toFixed(2), 'tiles', med(r[1]).toFixed(2), 'wino', med(r[2]).toFixed(2));
}
