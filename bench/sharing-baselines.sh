#!/usr/bin/env bash
# Every sharing baseline and Geo-Sharing (`geo`, K-FAC curvature, the defaults of `geoshare compress`) at the same
# parameter budget, on the bundled models. METHODS="geo" (etc.) limits the methods run.
# For each model, ratio and method: geoshare compress (calibration: 64 windows of valid.txt, stride 16, or
# 64 Fashion-MNIST training images) then evaluation on the test split. Finished cells are kept (delete a JSON
# to redo it). Writes bench/results/sharing/*.json and bench/sharing-baselines.md.
#   bench/sharing-baselines.sh [gpt2|llama|vit ...]      (REPORT_ONLY=1: only rewrite the table from the JSONs)
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/sharing
mkdir -p "$out"
models=("${@:-gpt2 llama vit}")
methods=(${METHODS:-svd adjacent all sequence cycle cycle-rev sandwich similarity random geo})

run() { # name, args...
  local json="$out/$1.json"; shift
  if [ -s "$json" ] || [ -n "${REPORT_ONLY:-}" ]; then return; fi
  echo "== $json" >&2
  ./geoshare "$@" --json "$json" >&2
}

for model in ${models[*]}; do
  case $model in
    gpt2|llama)
      dir=assets/models/$model-kjv-brown
      run "$model-none" eval --model "$dir" --data assets/data/corpus/test.txt
      for ratio in 0.2 0.3 0.4 0.5; do
        for m in "${methods[@]}"; do
          run "$model-$m-$ratio" compress --model "$dir" --data assets/data/corpus/valid.txt --ratio "$ratio" --method "$m" --eval assets/data/corpus/test.txt
        done
      done ;;
    vit)
      dir=assets/models/vit-fashion-mnist; fm=/usr/share/datasets/fashion-mnist
      run "vit-none" eval --model "$dir" --fashion-mnist "$fm"
      for ratio in 0.2 0.4; do
        for m in "${methods[@]}"; do
          extra=(); [ "$m" = geo ] && extra=(--curvature-windows 64 --curvature-stride 16)
          run "vit-$m-$ratio" compress --model "$dir" --fashion-mnist "$fm" --ratio "$ratio" --method "$m" --eval t10k "${extra[@]}"
        done
      done ;;
  esac
done

metric() { jq -r 'if .command == "eval" then (.perplexity // .accuracy) else (.evaluation.perplexity // .evaluation.accuracy) end' "$1"; }
{
  echo "# Geo-Sharing and the sharing baselines at equal parameter budgets"
  echo
  echo "Regenerate: \`bench/sharing-baselines.sh\` (results: \`bench/results/sharing/\`; a cell is recomputed when its JSON is deleted)."
  echo "Ratio = fraction of the shareable matrices' parameters removed; every group keeps 1 − ratio of its parameters"
  echo "(Basis Sharing's rank formula), so all methods store the same number of parameters up to one rank step per group."
  echo "Calibration: 64 windows of valid.txt (0, 16, 32, …) or 64 Fashion-MNIST training images (0, 16, …); coefficients"
  echo "refitted from ratio 0.4. Shared types: GPT-2 attn.c_attn, attn.c_proj, mlp.c_fc (mlp.c_proj per layer); LLaMA q, k, v,"
  echo "gate, up (o, down per layer); ViT query, key, value, intermediate (the output projections per layer)."
  for model in ${models[*]}; do
    case $model in gpt2|llama) ratios="0.2 0.3 0.4 0.5"; what="test perplexity (lower is better)";; vit) ratios="0.2 0.4"; what="test accuracy (higher is better)";; esac
    echo
    echo "## $model: $what"
    echo
    none=$(metric "$out/$model-none.json")
    printf "| method |"; for r in $ratios; do printf " %s |" "$r"; done; echo
    printf "|---|"; for r in $ratios; do printf -- "---:|"; done; echo
    printf "| none (dense) |"; for r in $ratios; do printf " %.4f |" "$none"; done; echo
    for m in "${methods[@]}"; do
      printf "| %s |" "$m"
      for r in $ratios; do f="$out/$model-$m-$r.json"; if [ -s "$f" ]; then printf " %.4f |" "$(metric "$f")"; else printf " – |"; fi; done
      echo
    done
    printf "| **best baseline** |"
    for r in $ratios; do
      best=""
      for m in "${methods[@]}"; do
        [ "$m" = geo ] && continue
        f="$out/$model-$m-$r.json"; [ -s "$f" ] || continue
        v=$(metric "$f")
        if [ -z "$best" ] || { [ "$model" = vit ] && awk "BEGIN{exit !($v > $best)}"; } || { [ "$model" != vit ] && awk "BEGIN{exit !($v < $best)}"; }; then best=$v; bm=$m; fi
      done
      if [ -n "$best" ]; then printf " %.4f (%s) |" "$best" "$bm"; else printf " – |"; fi
    done
    echo
    echo
    printf "Parameters kept (whole model) at each ratio, adjacent: "
    for r in $ratios; do f="$out/$model-adjacent-$r.json"; [ -s "$f" ] && printf "%s: %s  " "$r" "$(jq -r '.report.model_parameters_after' "$f")"; done
    echo
  done
} > bench/sharing-baselines.md
echo "wrote bench/sharing-baselines.md" >&2
