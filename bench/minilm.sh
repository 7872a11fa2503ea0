#!/usr/bin/env bash
# all-MiniLM-L6-v2 (scripts/fetch-minilm.sh) compressed by every heuristic and geo at equal parameter budgets; each cell
# is one `geoshare compress --eval` whose JSON goes to bench/results/minilm/METHOD-RATIO.json (a finished cell is kept,
# so the sweep resumes). The compressed model's embeddings of the first EVAL test sentences are compared with the dense
# model's (mean cosine, 10-NN agreement). Then bench/minilm.py writes bench/minilm.md. Small settings: the machine is shared.
# Usage: bench/minilm.sh [RATIOS] [METHODS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=assets/models/minilm
[ -f "$model/model.safetensors" ] || scripts/fetch-minilm.sh
ratios="${1:-0.3 0.5 0.2 0.4}"
methods="${2:-geo adjacent svd all sequence cycle cycle-rev sandwich similarity random}"
CALIB="--calib-windows 64 --calib-stride 40"          # 64 of the 3,000 valid sentences, spread over the file
CURV="--curvature-windows 32 --curvature-stride 90"   # geo's curvature batch: 32 sentences
EVAL=200
out=bench/results/minilm
mkdir -p "$out"
for r in $ratios; do
  for m in $methods; do
    cell="$out/$m-$r.json"
    [ -f "$cell" ] && continue
    extra=()
    if [ "$m" = geo ]; then extra=($CURV); fi
    # geo at 0.3 is also saved (outside the repository), for the save-and-reload check in bench/minilm.md
    if [ "$m" = geo ] && [ "$r" = 0.3 ]; then extra+=(--out "${GEO30:-/tmp/minilm-geo-30}" --force); fi
    echo "== $m $r ($(date +%T))" >&2
    nice "${GEOSHARE:-./geoshare}" compress --model "$model" --data assets/data/sentences/valid.txt $CALIB --ratio "$r" --method "$m" \
      --eval assets/data/sentences/test.txt --eval-limit "$EVAL" --json "$cell.tmp" "${extra[@]}" > "$out/$m-$r.log" 2>&1 \
      && mv "$cell.tmp" "$cell" || echo "cell $m $r failed (see $out/$m-$r.log)" >&2
  done
done
python3 bench/minilm.py
