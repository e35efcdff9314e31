#!/usr/bin/env bash
# Refresh .ci/advisory-db.tar.gz (and the commit and date in .ci/advisory-db.md) from the RustSec
# advisory database: a fresh clone from github.com, or the clone given as the first argument.
set -euo pipefail
cd "$(dirname "$0")"
src="${1:-}"
if [ -z "$src" ]; then
  src=$(mktemp -d)/advisory-db
  git clone --depth 1 https://github.com/rustsec/advisory-db "$src"
fi
commit=$(git -C "$src" log -1 --format=%H)
date=$(git -C "$src" log -1 --format=%cs)
tar czf advisory-db.tar.gz -C "$src" crates rust LICENSE.txt
count=$(find "$src/crates" -name '*.md' | wc -l)
size=$(( $(stat -c %s advisory-db.tar.gz) / 1000 ))
sed -i -E "s|^\`[0-9a-f]{40}\` of [0-9-]{10} \([0-9]+ KB compressed, [0-9]+ advisories\)\.|\`$commit\` of $date ($size KB compressed, $count advisories).|" advisory-db.md
echo "snapshot: $commit of $date, $count advisories"
