// Which of the two builds of the wasm this browser runs; shared by worker.js, sw.js and the
// benchmark page. No import or export, so it loads both as a module and by importScripts.
// build.sh makes pkg/cxr_relaxed_bg.wasm with relaxed SIMD, whose fused multiply-add speeds up the
// convolution kernels (bench/RESULTS.md), and pkg/cxr_bg.wasm with simd128 only, for browsers
// without relaxed SIMD. `?simd=plain` on the page asks for the simd128 build anywhere.
(() => {
  // A one-function module using i8x16.relaxed_swizzle: valid only where relaxed SIMD is.
  const RELAXED_SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123,
    3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 1, 253, 15, 65, 2, 253, 15, 253, 128, 2, 11]);
  const hasRelaxedSimd = () => {
    try { return WebAssembly.validate(RELAXED_SIMD_PROBE); } catch (_) { return false; }
  };
  self.cxrWasmFlavour = (requested) => (requested !== 'plain' && hasRelaxedSimd()
    ? { id: 'relaxed-simd', file: 'cxr_relaxed_bg.wasm', name: 'wasm with relaxed SIMD' }
    : { id: 'simd128', file: 'cxr_bg.wasm', name: 'wasm SIMD' });
})();
