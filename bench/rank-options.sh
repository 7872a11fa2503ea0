#!/usr/bin/env bash
# Geo-Sharing with given rank options (--kept-offsets) on the bundled GPT-2 and LLaMA, measured as bench/ablation.md's
# cells are: `geoshare compress --method geo` (calibration 64 validation windows, K-FAC on 4, the refit from 0.4), saved
# in float32, then test perplexity on the first 256 windows of test.txt and on all of the out-of-domain text.
# One cell per model, ratio and label in bench/results/rank-options/ (a finished cell is kept: delete it to recompute);
# bench/ablation.py adds them to bench/ablation.md.
# Usage: bench/rank-options.sh [MODELS] [RATIOS] [LABEL] [OFFSETS]
#   e.g. bench/rank-options.sh "gpt2 llama" "0.2 0.3" default ""      (the planner's default options)
#        bench/rank-options.sh gpt2 0.3 first "-0.2,-0.1,0,0.1,0.2"   (the options before 2026-12-07)
set -euo pipefail
cd "$(dirname "$0")/.."
models="${1:-gpt2 llama}"
ratios="${2:-0.2 0.3 0.4 0.5 0.6 0.7}"
label="${3:-default}"
offsets="${4:-}"
cells=bench/results/rank-options
mkdir -p "$cells"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for m in $models; do
  for r in $ratios; do
    cell="$cells/$m-$r-$label.json"
    [ -f "$cell" ] && continue
    extra=()
    [ -n "$offsets" ] && extra=(--kept-offsets "$offsets")
    ./geoshare compress --model "assets/models/$m-kjv-brown" --data assets/data/corpus/valid.txt --ratio "$r" --method geo \
      "${extra[@]}" --save-dtype float32 --out "$work/$m-$r" --json "$work/compress.json" > "$work/compress.log" 2>&1
    ./geoshare eval --model "$work/$m-$r" --data assets/data/corpus/test.txt --limit 256 --json "$work/test.json" 2> /dev/null > /dev/null
    ./geoshare eval --model "$work/$m-$r" --data assets/data/out-of-domain/gpl-3.txt --json "$work/ood.json" 2> /dev/null > /dev/null
    python3 - "$work" "$cell.tmp" "$m" "$r" "$label" <<'PY'
import json, sys
work, out, model, ratio, label = sys.argv[1:]
c = json.load(open(f"{work}/compress.json"))
t = json.load(open(f"{work}/test.json"))
o = json.load(open(f"{work}/ood.json"))
json.dump({"benchmark": "rank-options", "model": model, "ratio": float(ratio), "label": label,
           "kept_fractions": c["planner"]["kept_fractions"],
           "achieved_ratio": c["achieved_ratio"], "refit": c["refit"], "compress_seconds": c["wall_seconds"],
           "test_perplexity": t["perplexity"], "test_windows": t["windows"],
           "out_of_domain_perplexity": o["perplexity"], "out_of_domain_windows": o["windows"],
           "group_sizes": c["planner"].get("group_sizes")}, open(out, "w"), indent=1)
PY
    mv "$cell.tmp" "$cell"
    echo "$m $r $label: $(python3 -c "import json;d=json.load(open('$cell'));print(f\"test {d['test_perplexity']:.4f} ood {d['out_of_domain_perplexity']:.4f} ({d['compress_seconds']:.0f} s)\")")"
  done
done
python3 bench/ablation.py > /dev/null
