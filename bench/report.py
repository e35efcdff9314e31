"""Turns the JSON written by bench/run.sh into bench/RESULTS.md (markdown on stdout).

Usage: report.py OUT_DIR   (reads machine.json, ours-*.json, reference.json, browser.json, page.md)
"""

import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


machine = load("machine.json")
ref = load("reference.json")
infer = load("ours-infer.json")
browser = load("browser.json")
train_ours = {t["width"]: t for t in (load(f) for f in sorted(os.listdir(out)) if f.startswith("ours-train-")) if t}
train_torch = {t["width"]: t for t in ref["train"]}
train_columns = {t["width"]: t for t in (load(f) for f in sorted(os.listdir(out)) if f.startswith("columns-train-")) if t}

ms = lambda v: f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"
mb = lambda n: f"{n / 1e6:.2f} MB"
ratio = lambda a, b: f"**{a / b:.2f}**"

lines = []
w = lines.append
w(f"# Benchmark results ({machine['date']})")
w("")
w(f"Written by `./build.sh bench` (bench/run.sh). Machine: {machine['cpu']}, {machine['cores']} cores, "
  f"{machine['os']}; {machine['rustc']}; PyTorch {ref['torch']}, onnxruntime {ref['onnxruntime']}, "
  f"onnxruntime-web {machine['ort_web']}; {browser['userAgent'].split(') ')[-1]} headless. "
  f"Threads: {machine['threads']} for native runs (ours through rayon, PyTorch `set_num_threads`, "
  f"onnxruntime `intra_op_num_threads`), 1 in the browser for both runtimes. "
  f"Model: {infer['model']}, input {infer['input_size']}x{infer['input_size']}, batch 1 unless stated. "
  f"Each figure is a median; a ratio is ours / theirs, so below 1 means we are faster (or smaller).")
w("")
p = ref["parity"]
w("## Numerical parity")
w("")
w(f"A PyTorch reference of the same network (`bench/reference.py`) loaded our exported weights and gave "
  f"the same logits for the same preprocessed input: largest difference {p['max_diff']:.1e} "
  f"(onnxruntime on its ONNX export: {p['ort_max_diff']:.1e}; the check fails above {p['tolerance']:.0e}). "
  f"Ours {[round(v, 6) for v in p['ours']]}, PyTorch {[round(v, 6) for v in p['pytorch']]}.")
if browser:
    wl = browser["warm"]
    d = max(abs(a - b) for a, b in zip(wl["oursLogits"], wl["ortLogits"]))
    w(f"In the browser, our wasm and onnxruntime-web differed by {d:.1e}.")
w("")

w("## 1. Browser inference, CPU path (same page, alternating runs)")
w("")
if browser:
    wl = browser["warm"]
    w(f"| runtime | ms per inference (median of {browser['runs']}) |")
    w("|---|---|")
    flavour = "relaxed SIMD" if wl.get("ours_wasm") == "relaxed-simd" else "simd128"
    w(f"| ours (wasm, burn flex, {flavour}; the project's fused kernels, BatchNorm folded: the default) | {ms(wl['ours_ms'])} |")
    if wl.get("ours_simd128_ms"):
        w(f"| ours, the simd128 build (browsers without relaxed SIMD; `?simd=plain`) | {ms(wl['ours_simd128_ms'])} |")
    if wl.get("ours_columns_ms"):
        w(f"| ours with im2col columns and burn's BatchNorm (the previous default) | {ms(wl['ours_columns_ms'])} |")
    w(f"| ours with burn's conv2d and BatchNorm | {ms(wl['ours_other_ms'])} |")
    w(f"| onnxruntime-web (wasm EP, 1 thread, SIMD) | {ms(wl['ort_ms'])} |")
    w(f"| ratio ours / ORT (goal ≤ 1.0) | {ratio(wl['ours_ms'], wl['ort_ms'])} |")
    if wl.get("ours_simd128_ms"):
        w(f"| ratio simd128 build / ORT | {ratio(wl['ours_simd128_ms'], wl['ort_ms'])} |")
    w(f"| ratio default / burn's conv2d in wasm | {ratio(wl['ours_ms'], wl['ours_other_ms'])} |")
    if wl.get("ours_columns_ms"):
        w(f"| ratio default / im2col columns in wasm | {ratio(wl['ours_ms'], wl['ours_columns_ms'])} |")
w("")

w("## 2. Native training throughput (CPU)")
w("")
w(f"One step = forward, class-weighted cross-entropy, backward, AdamW, on random 1x256x256 inputs "
  f"(data loading excluded on both sides).")
w("")
w("| model | batch | ours img/s (the project's kernels and their backward passes, the training default) | ours with im2col columns (the previous default) | PyTorch img/s | ratio ours / PyTorch (goal ≥ 1.0) | kernels / columns |")
w("|---|---|---|---|---|---|---|")
for width in sorted(train_ours):
    o, t, c = train_ours[width], train_torch.get(width), train_columns.get(width)
    if not t:
        continue
    cols = f"{c['img_per_s']:.1f}" if c else "–"
    gain = ratio(o['img_per_s'], c['img_per_s']) if c else "–"
    w(f"| ResNet-18 x{width} ({o['params']:,} params) | {o['batch']} | {o['img_per_s']:.1f} | {cols} | {t['img_per_s']:.1f} | "
      f"{ratio(o['img_per_s'], t['img_per_s'])} | {gain} |")
w("")

w("## 3. Native inference latency (CPU, one image)")
w("")
w("| runtime | ms | ratio ours / it |")
w("|---|---|---|")
ours_ms = infer["logits_median_ms"]
w(f"| ours (burn flex + the project's fused kernels, BatchNorm folded), model alone | {ms(ours_ms)} | 1 |")
if "direct_median_ms" in infer:
    w(f"| ours with the direct fused kernel only (no Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions of 32 channels or more) | {ms(infer['direct_median_ms'])} | {ratio(ours_ms, infer['direct_median_ms'])} (default / direct only) |")
if "columns_median_ms" in infer:
    w(f"| ours with im2col columns and burn's BatchNorm (the previous default) | {ms(infer['columns_median_ms'])} | {ratio(ours_ms, infer['columns_median_ms'])} (fused / columns) |")
w(f"| ours with burn's conv2d and BatchNorm | {ms(infer['burn_conv_median_ms'])} | {ratio(ours_ms, infer['burn_conv_median_ms'])} (fused / conv2d) |")
w(f"| ours, with CAM and pooled features (the product's path) | {ms(infer['with_cam_median_ms'])} | |")
w(f"| PyTorch {ref['torch']} (eager, inference_mode) | {ms(ref['infer']['pytorch_ms'])} | {ratio(ours_ms, ref['infer']['pytorch_ms'])} |")
w(f"| onnxruntime {ref['onnxruntime']} (Python) | {ms(ref['infer']['onnxruntime_ms'])} | {ratio(ours_ms, ref['infer']['onnxruntime_ms'])} |")
w(f"| (ours: decoding the PNG, preprocessing) | {ms(infer['decode_ms'])}, {ms(infer['preprocess_ms'])} | |")
if "load_ms" in infer:
    w(f"| (ours: loading the model from its weight file, once) | {ms(infer['load_ms'])} | |")
w("")

w("## 4. Page weight and start-up")
w("")
if browser:
    b = browser["bundles"]
    ort_total = {k: b["ort_runtime"][k] + b["ort_model"][k] for k in ("raw", "brotli")}
    w("| what the browser downloads to run the model | raw | brotli |")
    w("|---|---|---|")
    w(f"| ours: cxr.js + cxr_relaxed_bg.wasm (runtime, decoders, saliency, model embedded; the build Chromium loads) | {mb(b['ours']['raw'])} | {mb(b['ours']['brotli'])} |")
    if "ours_simd128" in b:
        w(f"| ours, the simd128 build instead: cxr.js + cxr_bg.wasm | {mb(b['ours_simd128']['raw'])} | {mb(b['ours_simd128']['brotli'])} |")
    w(f"| onnxruntime-web: ort.wasm.min.mjs + ort-wasm-simd-threaded.{{mjs,wasm}} | {mb(b['ort_runtime']['raw'])} | {mb(b['ort_runtime']['brotli'])} |")
    w(f"| + the same model as ONNX (f32) | {mb(b['ort_model']['raw'])} | {mb(b['ort_model']['brotli'])} |")
    w(f"| onnxruntime-web total (no image decoding or saliency) | {mb(ort_total['raw'])} | {mb(ort_total['brotli'])} |")
    w(f"| ratio ours / ORT total | {ratio(b['ours']['raw'], ort_total['raw'])} | {ratio(b['ours']['brotli'], ort_total['brotli'])} |")
    w("")
page = os.path.join(out, "page.md")
if os.path.exists(page):
    w("The whole page (`node bench/page.mjs`):")
    w("")
    w(open(page).read().strip())
    w("")

w("## 5. GPU training")
w("")
w(machine.get("gpu_note", "Not measured: no GPU on this machine."))
w("")

w("## 6. Cold start: first result after load (fresh browser context, empty cache)")
w("")
if browser:
    import statistics as st
    c = browser["cold"]
    med = lambda xs, k: st.median(x[k] for x in xs)
    w(f"| runtime, backend | load code | init (model, warm-up) | first inference | total (median of {browser['cold_runs']}) |")
    w("|---|---|---|---|---|")
    w(f"| ours, CPU (wasm) | {ms(med(c['ours_cpu'], 'load_ms'))} | {ms(med(c['ours_cpu'], 'init_ms'))} | {ms(med(c['ours_cpu'], 'first_ms'))} | {ms(med(c['ours_cpu'], 'total_ms'))} |")
    w(f"| onnxruntime-web, wasm | (in session create) | {ms(med(c['ort_wasm'], 'init_ms'))} | {ms(med(c['ort_wasm'], 'first_ms'))} | {ms(med(c['ort_wasm'], 'total_ms'))} |")
    w(f"| ratio ours / ORT | | | | {ratio(med(c['ours_cpu'], 'total_ms'), med(c['ort_wasm'], 'total_ms'))} |")
    g = browser["webgpu"]
    if g.get("measured"):
        a = g["adapter"]
        kind = "a software adapter (SwiftShader), not a GPU" if a.get("fallback") or "swiftshader" in str(a).lower() else "a GPU adapter"
        w(f"| ours, WebGPU on {kind} | {ms(g['cold']['load_ms'])} | {ms(g['cold']['init_ms'])} | {ms(g['cold']['first_ms'])} | {ms(g['cold']['total_ms'])} (one run; next inference {ms(g['second_ms'])}) |")
    else:
        w(f"| ours, WebGPU | not measured: {g.get('reason')} | | | |")
    w("| onnxruntime-web, WebGPU | not measured | | | |")
w("")
base_infer, base_train, ours2 = load("base-infer.json"), load("base-train-0.25.json"), load("ours2-infer.json")
browser_base = browser and browser["warm"].get("baseline_ms")
if base_infer or browser_base:
    w("## 7. Before and after (the build in BASELINE, measured in this same run)")
    w("")
    w("| figure | before | after | after / before |")
    w("|---|---|---|---|")
    if browser_base:
        wl = browser["warm"]
        w(f"| browser inference, CPU path (alternating, median of {browser['runs']}) | {ms(wl['baseline_ms'])} | {ms(wl['ours_ms'])} | {ratio(wl['ours_ms'], wl['baseline_ms'])} |")
        bb, ob = browser["bundles"]["baseline"], browser["bundles"]["ours"]
        w(f"| cxr.js + the wasm Chromium loads, brotli | {mb(bb['brotli'])} | {mb(ob['brotli'])} | {ratio(ob['brotli'], bb['brotli'])} |")
    if base_infer:
        after = ours2 or infer
        w(f"| native inference, model alone (one image) | {ms(base_infer['logits_median_ms'])} | {ms(after['logits_median_ms'])} | {ratio(after['logits_median_ms'], base_infer['logits_median_ms'])} |")
        w(f"| native inference with CAM (the product's path) | {ms(base_infer['with_cam_median_ms'])} | {ms(after['with_cam_median_ms'])} | {ratio(after['with_cam_median_ms'], base_infer['with_cam_median_ms'])} |")
    else:
        w("| native figures | not measured: BASELINE holds no `trainer` | | |")
    if base_train and 0.25 in train_ours:
        o = train_ours[0.25]
        w(f"| native training x0.25, batch 16 (img/s) | {base_train['img_per_s']:.1f} | {o['img_per_s']:.1f} | {ratio(o['img_per_s'], base_train['img_per_s'])} |")
    w("")
    w("The page's before/after figures (drop → result) are in section 4, under the page table.")
    w("")

extra = os.path.join(out, "notes.md")
if os.path.exists(extra):
    w(open(extra).read().strip())
    w("")
print("\n".join(lines))
