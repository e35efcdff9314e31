#!/usr/bin/env bash
# Loader throughput from raw PNGs and from the preprocessed cache, and peak memory, in one run
# (issue #19): makes a synthetic NIH-layout set (bench/synthetic_nih.sh), prepares its cache
# (`trainer prepare`), then times `trainer bench loader` (the training loader: same shuffled
# order, threads and batches as an epoch, without the model) on the raw folder and on the cache,
# with on-the-fly augmentation (as training loads) and without (as validation loads). Peak memory is GNU time's maximum resident set size of each command.
# Prints a Markdown table for docs/training.md.
#
# usage: bench/loader_throughput.sh [N] [STORAGE] [WORK]
#   N        images (default 100000)
#   STORAGE  cache storage: u8 (default), f16 or f32
#   WORK     folder for the set and the cache (default ${TMPDIR:-/tmp}/cxr-loader-bench; must
#            not exist). Disk: the cache takes N x SIZE² x (1, 2 or 4 bytes): 6.6 GB for 100 000
#            u8 images at 256, 13 GB for f16, 26 GB for f32; the set itself is hard links.
# environment: SIZE (input size, 256), WORKERS (loader and prepare threads, 2),
#   TRAINER (default $CARGO_TARGET_DIR/release/trainer, else target/release/trainer).
# Build first: cargo build --release -p trainer. Remove WORK afterwards.
set -euo pipefail

n=${1:-100000}
storage=${2:-u8}
work=${3:-${TMPDIR:-/tmp}/cxr-loader-bench}
size=${SIZE:-256}
workers=${WORKERS:-2}
here=$(cd "$(dirname "$0")" && pwd)
trainer=${TRAINER:-${CARGO_TARGET_DIR:-$here/../target}/release/trainer}
[[ -x $trainer ]] || { echo "no trainer at $trainer: cargo build --release -p trainer" >&2; exit 1; }

"$here/synthetic_nih.sh" "$n" "$work/raw"

# Run a command under GNU time; its stdout goes to $1.out, time's report to $1.time.
timed() {
  local name=$1
  shift
  /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.out"
}
peak_mb() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$work/$1.time"; }
wall_s() {
  awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.1f", s}' "$work/$1.time"
}

timed prepare "$trainer" prepare --data "$work/raw" --out "$work/cache" --input-size "$size" \
  --storage "$storage" --workers "$workers" --quiet
cat "$work/prepare.out" >&2
bench=(bench loader --input-size "$size" --workers "$workers")
for source in raw cache; do
  timed "$source-augment" "$trainer" "${bench[@]}" --data "$work/$source" --augment
  timed "$source-plain" "$trainer" "${bench[@]}" --data "$work/$source"
done

prepared=$(jq -r '.items | length' "$work/cache/cache.json")
echo
echo "$n synthetic NIH images ($prepared effusion or no finding), ${size}x${size}, $workers threads, cache storage $storage, $(nproc) cores"
echo
echo '| step | images | seconds | images/s | peak memory (MB) |'
echo '|---|---:|---:|---:|---:|'
p_s=$(wall_s prepare)
printf '| `trainer prepare` (decode, min-max, resize, write %s) | %d | %s | %.0f | %s |\n' \
  "$storage" "$prepared" "$p_s" "$(awk -v a="$prepared" -v b="$p_s" 'BEGIN {print a / b}')" "$(peak_mb prepare)"
for step in raw-augment cache-augment raw-plain cache-plain; do
  from=$([[ $step == raw* ]] && echo 'raw PNGs' || echo "the $storage cache")
  with=$([[ $step == *augment ]] && echo 'with augmentation, as training' || echo 'no augmentation, as validation')
  jq -r --arg step "loader from $from ($with)" --arg peak "$(peak_mb "$step")" \
    '"| \($step) | \(.images) | \(.seconds * 10 | round / 10) | \(.images_per_s | round) | \($peak) |"' \
    "$work/$step.out"
done
echo
echo "cache size: $(du -sh "$work/cache" | cut -f1); remove the set and cache with: rm -rf $work"
