#!/usr/bin/env bash
# What each part of Geo-Sharing buys: for GPT-2 and LLaMA at ratios 0.2–0.7, svd, adjacent and geo with one part changed
# at a time (bench/GeoShare.Bench/Ablation.cs), test perplexity in and out of domain. One cell per model and ratio in
# bench/results/ablation/ (a finished cell is kept: delete it to recompute), then bench/ablation.py writes bench/ablation.md.
# Usage: bench/ablation.sh [MODELS] [RATIOS]   e.g. bench/ablation.sh "gpt2" "0.3 0.5"
set -euo pipefail
cd "$(dirname "$0")/.."
models="${1:-gpt2 llama}"
ratios="${2:-0.2 0.3 0.4 0.5 0.6 0.7}"
dotnet build bench/GeoShare.Bench -c Release -v q > /dev/null
for m in $models; do
  # shellcheck disable=SC2086
  nice -n "${NICE:-10}" bench/GeoShare.Bench/bin/Release/net10.0/linux-x64/GeoShare.Bench ablation "$m" bench/results/ablation \
    assets/data/out-of-domain/gpl-3.txt 256 $ratios
done
python3 bench/ablation.py > /dev/null
