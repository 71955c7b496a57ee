#!/usr/bin/env bash
# Reproduces docs/RESULTS.md: tokenises the 11 MB corpus of ../shared/data, trains the GPT-2
# and ViT variants one after another, then measures their step times side by side (three
# interleaved rounds). About an hour on two cores. Output under ${OUT:-runs/results}.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p monarch-train --bins
B=target/release
OUT=${OUT:-runs/results}
SHARED=${SHARED:-../shared/data}
mkdir -p "$OUT"
[ -d "$OUT/corpus11" ] || $B/monarch tokenize "$SHARED/text/shakespeare" "$SHARED/text/brown" --out "$OUT/corpus11" --val-fraction 0.05
FASHION="$SHARED/images/fashion-mnist"
gpt2_flags=("--linear dense" "--linear monarch --nblocks 4" "--linear pixelfly --n-factors 3 --block 16 --rank 32")
vit_flags=("--linear dense" "--linear monarch --nblocks 4")
for flags in "${gpt2_flags[@]}"; do
  name=gpt2-$(echo "$flags" | cut -d' ' -f2)
  # shellcheck disable=SC2086
  $B/train-gpt2 --config gpt2-mini --data "$OUT/corpus11" $flags --out-dir "$OUT/$name" 2> "$OUT/$name.log"
done
for flags in "${vit_flags[@]}"; do
  name=vit-$(echo "$flags" | cut -d' ' -f2)
  # shellcheck disable=SC2086
  $B/train-vit --config vit-fashion --data "$FASHION" $flags --out-dir "$OUT/$name" 2> "$OUT/$name.log"
done
for round in 1 2 3; do
  for flags in "${gpt2_flags[@]}"; do
    # shellcheck disable=SC2086
    $B/train-gpt2 --config gpt2-mini --data "$OUT/corpus11" $flags --out-dir "$OUT/steps" --stop-after 30 --eval-every 0 --log-every 10 --quiet
    echo "round $round gpt2 $flags $(grep '"step":30' "$OUT/steps/metrics.jsonl" | grep -o '"tokens_per_s":[0-9.]*')"
    rm -r "$OUT/steps"
  done
  for flags in "${vit_flags[@]}"; do
    # shellcheck disable=SC2086
    $B/train-vit --config vit-fashion --data "$FASHION" $flags --out-dir "$OUT/steps" --stop-after 30 --eval-every 0 --log-every 10 --quiet
    echo "round $round vit $flags $(grep '"step":30' "$OUT/steps/metrics.jsonl" | grep -o '"images_per_s":[0-9.]*')"
    rm -r "$OUT/steps"
  done
done | tee "$OUT/steps.txt"
