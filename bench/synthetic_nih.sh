#!/usr/bin/env bash
# A synthetic NIH ChestX-ray14 layout for loader measurements (bench/loader_throughput.sh): N
# images named as NIH names them (PATIENT_FOLLOWUP.png, 10 000 per images_NNN/images/ folder)
# with a Data_Entry_2017.csv in NIH's columns. Each image is a hard link to one of the source
# PNGs (default: the test fixtures; any folder of PNGs whose effusion images have "effusion" in
# their path), so 100 000 images cost inodes and an 8 MB CSV, not pixels. About 10 % are
# effusion, 85 % no finding and 5 % another finding (rows `train` leaves out, as in NIH); three
# images per patient. For timing only: the set holds a handful of distinct pictures.
#
# usage: bench/synthetic_nih.sh N OUT [FROM]    (OUT must not exist yet)
set -euo pipefail

n=${1:?usage: bench/synthetic_nih.sh N OUT [FROM]}
out=${2:?usage: bench/synthetic_nih.sh N OUT [FROM]}
from=${3:-$(dirname "$0")/../tests/fixtures}

if [[ -e $out ]]; then
  echo "$out exists; give a new folder" >&2
  exit 1
fi
mapfile -t effusion < <(find "$from" -maxdepth 2 -name '*.png' -path '*effusion*' | sort)
mapfile -t normal < <(find "$from" -maxdepth 2 -name '*.png' ! -path '*effusion*' | sort)
if (( ${#effusion[@]} == 0 || ${#normal[@]} == 0 )); then
  echo "$from needs PNGs with and without 'effusion' in their path" >&2
  exit 1
fi

mkdir -p "$out"
csv=$out/Data_Entry_2017.csv
echo 'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],' >"$csv"
for ((i = 0; i < n; i++)); do
  patient=$((i / 3 + 1))
  followup=$((i % 3))
  name=$(printf '%08d_%03d.png' "$patient" "$followup")
  dir=$out/$(printf 'images_%03d' $((i / 10000 + 1)))/images
  if ((i % 10000 == 0)); then
    mkdir -p "$dir"
  fi
  if ((i % 10 == 0)); then
    finding=Effusion
    src=${effusion[$((i / 10 % ${#effusion[@]}))]}
  else
    if ((i % 20 == 1)); then finding=Atelectasis; else finding='No Finding'; fi
    src=${normal[$((i % ${#normal[@]}))]}
  fi
  ln "$src" "$dir/$name" 2>/dev/null || cp "$src" "$dir/$name"
  echo "$name,$finding,$followup,$patient,$((30 + patient % 50)),M,PA,512,512,0.143,0.143," >>"$csv"
  if ((i > 0 && i % 10000 == 0)); then
    echo "  $i images" >&2
  fi
done
echo "$n images in $out (NIH layout, hard links to $from)" >&2
