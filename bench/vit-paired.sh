#!/usr/bin/env bash
# Can Fashion-MNIST's test split rank sharing methods on the ViT? At each ratio of RATIOS (default: the issue's 0.2
# and 0.4), compresses
# the ViT with geo and with the heuristic of best accuracy in bench/results.json (the same commands as the sweep's
# cells), then compares them and the dense model image by image: McNemar's exact test on the images only one of a
# pair gets right, and the paired mean loss difference with its standard error.
# Writes bench/results/vit-paired.json and bench/vit-paired.md.
set -euo pipefail
cd "$(dirname "$0")/.."
json=bench/results/vit-paired.json
fm=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
vit=assets/models/vit-fashion-mnist
if [ ! -s "$json" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  models=("dense=$vit")
  for r in ${RATIOS:-0.2 0.4}; do
    best=$(jq -r --argjson r "$r" '[.cells[] | select(.model == "vit" and .ratio == $r and .method != "geo")] | max_by(.metric) | .method' bench/results.json)
    for m in geo "$best"; do
      ./geoshare compress --model $vit --fashion-mnist "$fm" --ratio "$r" --method "$m" --out "$tmp/$m-$r" >&2
      models+=("$m-$r=$tmp/$m-$r")
    done
  done
  dotnet run -c Release --project bench/GeoShare.Bench -- paired-images "$json" "$fm" $vit "${models[@]}"
fi
{
  echo "# Can the ViT's test split rank the methods?"
  echo
  echo "Regenerate: \`bench/vit-paired.sh\` (delete \`$json\` to recompute). $(jq -r .test_images $json) Fashion-MNIST test images;"
  echo "at each ratio, geo and the heuristic of best accuracy in \`bench/report.md\`, compressed by the sweep's own command."
  echo
  echo "| model | accuracy | correct | mean NLL |"
  echo "|---|---:|---:|---:|"
  jq -r '.models[] | "| \(.label) | \(.accuracy*10000|round/10000) | \(.correct) | \(.mean_nll*1e5|round/1e5) |"' $json
  echo
  echo "Pairs: images only the first / only the second gets right, McNemar's exact two-sided p, and the mean per-image"
  echo "loss difference (first − second) ± its standard error."
  echo
  echo "| first | second | only first right | only second right | McNemar p | ΔNLL ± se |"
  echo "|---|---|---:|---:|---:|---:|"
  jq -r '.pairs[] | "| \(.first) | \(.second) | \(.only_first_correct) | \(.only_second_correct) | \(.mcnemar_exact_p*1000|round/1000) | \(.mean_nll_difference*1e5|round/1e5) ± \(.mean_nll_difference_se*1e5|round/1e5) |"' $json
} > bench/vit-paired.md
cat bench/vit-paired.md
