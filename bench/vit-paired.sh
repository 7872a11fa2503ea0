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
  echo "Pairs (each compressed model against the dense one, and geo against the heuristic at the same ratio): the"
  echo "images only the first / only the second gets right, McNemar's exact two-sided p on those, and the mean per-image"
  echo "loss difference (first − second) with its standard error, in units of 10⁻⁵."
  echo
  echo "| first | second | only first right | only second right | McNemar p | ΔNLL ×10⁵ ± se |"
  echo "|---|---|---:|---:|---:|---:|"
  jq -r '.pairs[] | select(.first == "dense" or ((.first | split("-") | last) == (.second | split("-") | last)))
    | "| \(.first) | \(.second) | \(.only_first_correct) | \(.only_second_correct) | \(.mcnemar_exact_p*1000|round/1000) | \(.mean_nll_difference*1e7|round/100) ± \(.mean_nll_difference_se*1e7|round/100) |"' $json
  echo
  echo "Any two of these models disagree in correctness on at most $(jq '[.pairs[] | .only_first_correct + .only_second_correct] | max' $json) of"
  echo "$(jq .test_images $json) images, and no pair's McNemar p is below $(jq '[.pairs[].mcnemar_exact_p] | min*1000|round/1000' $json): at these ratios the test"
  echo "accuracy cannot rank the methods. The mean loss can, where its difference is several standard errors."
} > bench/vit-paired.md
cat bench/vit-paired.md
