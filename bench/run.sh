#!/usr/bin/env bash
# ./build.sh bench: measures ours against PyTorch, onnxruntime and onnxruntime-web in one run and
# writes bench/RESULTS.md. Needs dist/ (./build.sh builds it first). Creates bench/.venv (PyTorch
# CPU, onnxruntime) and bench/node_modules (onnxruntime-web) on first use.
# Environment: THREADS (native threads, default: all cores), RUNS (browser runs, default 30),
# PAGE_RUNS (page drops, default 12),
# BASELINE (a folder holding an earlier build's dist/ files and, for the native figures, its
# `trainer` binary: measured in the same run, alternating where it can, for before/after figures).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out
THREADS="${THREADS:-$(nproc)}"
TRAINER="$CARGO_TARGET_DIR/release/trainer"
log() { printf '\n== %s\n' "$*" >&2; }

if [ ! -x bench/.venv/bin/python ] || ! bench/.venv/bin/python -c 'import torch, onnxruntime, onnx' 2>/dev/null; then
  log "creating bench/.venv (PyTorch CPU, onnxruntime: a few GB from PyPI, once)"
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q --upgrade pip
  bench/.venv/bin/pip install -q torch==2.9.1 onnx==1.23.2 onnxruntime==1.32.0 numpy
fi
log "onnxruntime-web (npm, bench/node_modules)"
npm --prefix bench ci --no-audit --no-fund --silent

log "trainer (release)"
cargo build --release --locked -p trainer
rm -rf "$OUT"
mkdir -p "$OUT"
"$TRAINER" bench interop --out "$OUT/interop" >/dev/null

log "ours, native: inference and training steps ($THREADS threads)"
RAYON_NUM_THREADS="$THREADS" "$TRAINER" bench infer --runs 30 > "$OUT/ours-infer.json"
for width in 0.25 1.0; do
  RAYON_NUM_THREADS="$THREADS" "$TRAINER" bench train --width "$width" --batch-size 16 --steps 5 --warmup 2 \
    > "$OUT/ours-train-$width.json"
  RAYON_NUM_THREADS="$THREADS" "$TRAINER" bench train --width "$width" --batch-size 16 --steps 5 --warmup 2 \
    --columns > "$OUT/columns-train-$width.json"
done

if [ -n "${BASELINE:-}" ]; then
  BASELINE=$(realpath "$BASELINE")
  export BASELINE
fi
# The native before/after needs the earlier build's trainer; the browser and page ones only its
# dist/ files.
if [ -n "${BASELINE:-}" ] && [ -x "$BASELINE/trainer" ]; then
  log "baseline build ($BASELINE), native, interleaved with ours"
  RAYON_NUM_THREADS="$THREADS" "$BASELINE/trainer" bench infer --runs 30 > "$OUT/base-infer.json"
  RAYON_NUM_THREADS="$THREADS" "$TRAINER" bench infer --runs 30 > "$OUT/ours2-infer.json"
  RAYON_NUM_THREADS="$THREADS" "$BASELINE/trainer" bench train --width 0.25 --batch-size 16 --steps 5 --warmup 2 \
    > "$OUT/base-train-0.25.json"
fi

log "PyTorch reference: parity, ONNX export, PyTorch and onnxruntime timings"
bench/.venv/bin/python -W ignore bench/reference.py "$OUT/interop" "$OUT" --threads "$THREADS" --runs 30 \
  --train-widths 0.25,1.0 > "$OUT/reference.json"

log "browser: ours vs onnxruntime-web in headless Chromium"
node bench/browser.mjs "$OUT" > "$OUT/browser.json"
node bench/page.mjs > "$OUT/page.md"

ort_web=$(node -p "require('./bench/node_modules/onnxruntime-web/package.json').version")
gpu_note="Not measured: no GPU on this machine."
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu_note="Not measured by this command yet (a GPU is present: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))."
fi
cat > "$OUT/machine.json" <<JSON
{"date": "$(date -u +%Y-%m-%d)", "cpu": "$(lscpu | sed -n 's/^Model name: *//p' | head -1)", "cores": $(nproc),
 "os": "$(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r)", "rustc": "$(rustc --version)",
 "threads": $THREADS, "ort_web": "$ort_web", "gpu_note": "$gpu_note"}
JSON
[ -f bench/notes.md ] && cp bench/notes.md "$OUT/notes.md"
bench/.venv/bin/python bench/report.py "$OUT" > bench/RESULTS.md
log "written bench/RESULTS.md"
cat bench/RESULTS.md
