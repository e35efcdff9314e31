#!/usr/bin/env bash
# Build, serve and test the in-browser chest X-ray classifier.
#
#   ./build.sh               build dist/: the wasm crate in release + the static site
#   ./build.sh serve [PORT]  build, then serve dist/ on http://127.0.0.1:PORT/ (default 8080)
#   ./build.sh test          every test: fmt, clippy and file-length gate, dependency checks,
#                            native cargo tests, the wasm build, browser tests
#   ./build.sh bench         build, then compare with PyTorch, onnxruntime(-web): bench/RESULTS.md
#
# Installs what it needs on a fresh machine: the wasm32 Rust target, wasm-bindgen-cli at the
# version in Cargo.lock, npm packages (binaryen's wasm-opt, playwright-core) and, for the browser
# tests, Debian's Chromium. Set CARGO_TARGET_DIR to keep build outputs outside the checkout.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WASM_TARGET=wasm32-unknown-unknown
DIST="$ROOT/dist"

log() { printf '\n==> %s\n' "$*" >&2; }

ensure_wasm_tools() {
  if ! rustup target list --installed | grep -qx "$WASM_TARGET"; then
    log "installing the Rust target $WASM_TARGET"
    rustup target add "$WASM_TARGET"
  fi
  local want have
  want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
  have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$want" ]; then
    log "installing wasm-bindgen-cli $want (the version in Cargo.lock)"
    # Not --locked: its lock file pins a yanked webpki-roots.
    cargo install wasm-bindgen-cli --version "$want"
  fi
}

ensure_npm() {
  if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ]; then
    log "installing npm packages (binaryen, playwright-core)"
    npm ci --no-audit --no-fund
  fi
}

ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1; then
    log "installing Debian's chromium for the browser tests"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
    fi
  fi
}

# One flavour of the wasm: build with RUSTFLAGS $3 in cargo profile $2, generate the JS glue into
# folder $4, then wasm-opt with the extra feature flags $5 (cached per input, as it takes minutes).
build_wasm_flavour() {
  local name=$1 profile=$2 features=$3 out=$4 opt_flags=$5
  log "building the wasm crate ($name: $features)"
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=$features" \
    cargo build --lib --locked --target "$WASM_TARGET" --profile "$profile" --features wgpu
  rm -rf "$out"
  wasm-bindgen --target web --no-typescript --out-dir "$out" \
    "$CARGO_TARGET_DIR/$WASM_TARGET/$profile/cxr.wasm"
  # start() in src/web.rs runs the static constructors once. Without that call wasm-ld makes every
  # export run all of them first, and the glue names such exports `*_command_export`.
  if grep -q command_export "$out/cxr.js"; then
    echo "the wasm's exports run the static constructors on every call: see start() in src/web.rs" >&2
    return 1
  fi
  # -ocimfs: wasm-opt inlines a function with one caller into it, however large, by default. That
  # made the page's call-once functions (classify's and init's bodies) 86-132 KB of wasm each,
  # and one with a hot loop inlined is compiled by the browser to optimised code as a whole:
  # 200-380 ms of compiling each, running when the page's first drop does (bench/RESULTS.md).
  local args="-Oz --one-caller-inline-max-function-size=1000 --enable-simd --enable-bulk-memory
    --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int
    --enable-reference-types --enable-multivalue $opt_flags"
  local key cached
  # The cached output is keyed by the input, wasm-opt's version and every flag.
  # shellcheck disable=SC2086 # $args is a list of flags
  key=$( (sha256sum "$out/cxr_bg.wasm"; node_modules/.bin/wasm-opt --version; echo $args) | sha256sum | cut -c1-32)
  cached="$CARGO_TARGET_DIR/wasm-opt-cache/$key.wasm"
  if [ -f "$cached" ]; then
    log "optimised wasm ($name) unchanged (wasm-opt output reused)"
    cp "$cached" "$out/cxr_bg.wasm"
  else
    log "optimising the wasm ($name; wasm-opt -Oz)"
    # shellcheck disable=SC2086 # $args is a list of flags
    node_modules/.bin/wasm-opt $args "$out/cxr_bg.wasm" -o "$out/cxr_bg.wasm"
    mkdir -p "$(dirname "$cached")"
    find "$(dirname "$cached")" -name '*.wasm' -mtime +7 -delete
    cp "$out/cxr_bg.wasm" "$cached"
  fi
}

build() {
  ensure_wasm_tools
  ensure_npm
  rm -rf "$DIST"
  mkdir -p "$DIST"
  # Two builds of the same crate: simd128 (every current browser), and simd128 plus relaxed SIMD,
  # whose fused multiply-add makes the kernels' inner loop faster where the browser has it (the
  # worker picks one: www/wasm-flavour.js). Separate cargo profiles keep both builds cached.
  build_wasm_flavour simd128 wasm-release "+simd128" "$DIST/pkg" ""
  local relaxed="$CARGO_TARGET_DIR/wasm-relaxed-pkg"
  build_wasm_flavour "relaxed SIMD" wasm-relaxed "+simd128,+relaxed-simd" "$relaxed" "--enable-relaxed-simd"
  # One JS glue serves both: it must not depend on the flavour.
  if ! cmp -s "$DIST/pkg/cxr.js" "$relaxed/cxr.js"; then
    echo "the two wasm flavours got different JS glue from wasm-bindgen" >&2
    return 1
  fi
  cp "$relaxed/cxr_bg.wasm" "$DIST/pkg/cxr_relaxed_bg.wasm"
  cp -r www/. "$DIST/"
  # The service worker's cache name changes with every build, so a new build replaces the old cache.
  local stamp
  stamp=$(cd "$DIST" && find . -type f ! -name sw.js -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  sed -i "s/__BUILD__/$stamp/" "$DIST/sw.js"
  local file raw br
  for file in cxr_bg.wasm cxr_relaxed_bg.wasm; do
    raw=$(stat -c %s "$DIST/pkg/$file")
    br=$(node -e "const z=require('zlib');process.stdout.write(String(z.brotliCompressSync(require('fs').readFileSync(process.argv[1])).length))" "$DIST/pkg/$file")
    log "dist/ ready: $file $raw bytes ($br bytes brotli)"
  done
}

serve() {
  local port=${1:-8080}
  build
  log "serving dist/ at http://127.0.0.1:$port/ (Ctrl+C to stop)"
  exec python3 -m http.server "$port" --bind 127.0.0.1 --directory "$DIST"
}

ensure_cargo_deny() {
  if ! command -v cargo-deny >/dev/null 2>&1; then
    log "installing cargo-deny (licence, source and advisory checks of the dependencies)"
    cargo install cargo-deny --locked --version 0.20.2
  fi
}

dependency_checks() {
  ensure_cargo_deny
  log "dependency licences, sources and bans (cargo deny)"
  cargo deny --locked check licenses bans sources
  # The RustSec advisory database is a git repository on github.com. Where github.com cannot be
  # reached (as on this project's build machines), check against a clone named by CXR_ADVISORY_DB
  # or else the snapshot bundled in .ci/ (see .ci/advisory-db.md), and say which.
  if timeout 20 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
    log "known vulnerabilities (cargo deny check advisories, live RustSec database)"
    cargo deny --locked check advisories
    return
  fi
  # cargo-deny looks for the database under a folder name it derives from the URL.
  local dbs db
  dbs=$(mktemp -d)
  db="$dbs/advisory-db-3157b0e258782691"
  if [ -n "${CXR_ADVISORY_DB:-}" ]; then
    log "known vulnerabilities against the local advisory database clone $CXR_ADVISORY_DB"
    ln -s "$(realpath "$CXR_ADVISORY_DB")" "$db"
  else
    local stamp
    stamp=$(grep -oE '^`[0-9a-f]{40}` of [0-9-]{10}' .ci/advisory-db.md | tr -d '`')
    log "known vulnerabilities against the bundled RustSec snapshot ($stamp; github.com unreachable)"
    mkdir -p "$db"
    tar xzf .ci/advisory-db.tar.gz -C "$db"
    # cargo-deny opens the database as a git repository.
    git -C "$db" init -q
    git -C "$db" add -A
    GIT_AUTHOR_DATE="${stamp##* }T00:00:00Z" GIT_COMMITTER_DATE="${stamp##* }T00:00:00Z" \
      git -C "$db" -c user.name=snapshot -c user.email=snapshot@localhost commit -qm "snapshot $stamp"
  fi
  sed "s|^\[advisories\]|[advisories]\ndb-path = \"$dbs\"|" deny.toml > "$dbs/deny.toml"
  cargo deny --locked --offline --config "$dbs/deny.toml" check advisories
}

# The shape gate: formatting, clippy with warnings as errors (clippy.toml: functions of at most 80
# lines), and no Rust source file over 500 lines (vendored code aside).
lint() {
  log "formatting (cargo fmt --check)"
  cargo fmt --all --check
  log "lints (cargo clippy --workspace --all-targets -- -D warnings)"
  cargo clippy --locked --workspace --all-targets -- -D warnings
  log "file length (at most 500 lines per Rust source file)"
  local long
  long=$(git ls-files '*.rs' ':!vendor' | xargs wc -l | awk '$2 != "total" && $1 > 500')
  if [ -n "$long" ]; then
    printf 'over 500 lines:\n%s\n' "$long" >&2
    return 1
  fi
}

run_tests() {
  lint
  dependency_checks
  log "native tests (cargo test --release --workspace)"
  cargo test --release --locked --workspace
  build
  ensure_chromium
  log "browser tests (headless Chromium)"
  node --test tests/browser/
}

case "${1:-build}" in
  build) build ;;
  serve) shift; serve "$@" ;;
  test) run_tests ;;
  bench) build; ensure_chromium; bench/run.sh ;;
  *) echo "usage: $0 [build | serve [PORT] | test | bench]" >&2; exit 2 ;;
esac
