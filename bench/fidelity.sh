#!/usr/bin/env bash
# Fidelity of Geo-Sharing's cost model: predicted vs measured increase of calibration loss over 40 sharing plans of
# GPT-2 (9 heuristics × ratios 0.1–0.4, and geo with each curvature at 0.2 and 0.4), for the exact and K-FAC block
# models; and the cross-layer part of δᵀHδ that the block-diagonal model ignores. Writes bench/results/fidelity.json
# and bench/fidelity.md; the same ranking check for the ViT (K-FAC) into bench/results/fidelity-vit.json.
set -euo pipefail
cd "$(dirname "$0")/.."
json=bench/results/fidelity.json
vit=bench/results/fidelity-vit.json
[ -s "$json" ] || dotnet run -c Release --project bench/GeoShare.Bench -- fidelity "$json"
[ -s "$vit" ] || dotnet run -c Release --project bench/GeoShare.Bench -- fidelity-images "$vit" "${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
{
  echo "# Fidelity of the second-order cost model (GPT-2)"
  echo
  echo "Regenerate: \`bench/fidelity.sh\` (delete \`$json\` to recompute; $(jq -r .wall_seconds $json | cut -d. -f1) s, $(jq -r .threads $json) thread(s))."
  echo
  echo "Curvature batch: $(jq -r .curvature_batch $json); whitening/A: $(jq -r .calibration $json)."
  echo "Measured: mean next-token loss on 32 other validation windows (8, 24, …; dense $(jq -r '.dense_loss*1e6|round/1e6' $json))"
  echo "after compressing with each plan (no refit). Predicted: Σ over the 48 blocks of ⟨g, δ⟩ + ½δᵀĤδ for the block's δ."
  echo
  echo "| Spearman ρ over $(jq -r .plans $json) plans | exact | K-FAC |"
  echo "|---|---:|---:|"
  echo "| ½δᵀĤδ (the planner's score, its default) | $(jq -r '.spearman.exact_quadratic_only*1000|round/1000' $json) | $(jq -r '.spearman.kfac_quadratic_only*1000|round/1000' $json) |"
  echo "| ⟨g, δ⟩ + ½δᵀĤδ (with \`--gradient\`) | $(jq -r '.spearman.exact*1000|round/1000' $json) | $(jq -r '.spearman.kfac*1000|round/1000' $json) |"
  echo
  echo "Within one ratio (the planner compares plans at one budget), Spearman ρ of ½δᵀĤδ against the measured ΔL:"
  echo
  echo "| ratio | plans | exact | K-FAC |"
  echo "|---:|---:|---:|---:|"
  # The same Spearman (average ranks for ties) as the overall figures: Fidelity.Spearman in the bench project.
  dotnet run -c Release --project bench/GeoShare.Bench -v q -- fidelity-by-ratio "$json"
  echo
  echo "Curvature: exact $(jq -r '.curvature_seconds.exact|round' $json) s, K-FAC $(jq -r '.curvature_seconds.kfac|round' $json) s in this run (times depend on what else"
  echo "the machine ran; the README gives the exact plan's time alone)."
  echo
  echo "## Cross-layer terms"
  echo
  echo "δᵀHδ with the exact Hessian of all 48 projection matrices together (one Hessian-vector product), against the"
  echo "sum of its diagonal blocks δ_ℓᵀH_ℓℓδ_ℓ (one product per block), on the curvature batch:"
  echo
  echo "| plan | δᵀHδ | block-diagonal part | cross-layer part | cross-layer share |"
  echo "|---|---:|---:|---:|---:|"
  jq -r '.cross_layer[] | "| \(.plan) | \(.full_quadratic*1e4|round/1e4) | \(.block_diagonal*1e4|round/1e4) | \(.cross_layer*1e4|round/1e4) | \(.cross_layer_share*1000|round/10)% |"' $json
  echo
  echo "## Every plan"
  echo
  echo "| plan | measured ΔL | ½δᵀĤδ, exact | ½δᵀĤδ, K-FAC | with ⟨g, δ⟩, exact | with ⟨g, δ⟩, K-FAC |"
  echo "|---|---:|---:|---:|---:|---:|"
  jq -r '.rows[] | "| \(.plan) | \(.measured*1e5|round/1e5) | \(.quadratic_exact*1e5|round/1e5) | \(.quadratic_kfac*1e5|round/1e5) | \(.predicted_exact*1e5|round/1e5) | \(.predicted_kfac*1e5|round/1e5) |"' $json
  echo
  echo "## ViT (K-FAC only)"
  echo
  echo "The same check on the ViT at the ratios where its methods separate (\`fidelity-images\`; one exact product over its"
  echo "72 blocks takes about 20 s here, so K-FAC only). Curvature batch: $(jq -r .curvature_batch $vit); whitening/A:"
  echo "$(jq -r .calibration $vit). Measured: mean loss on $(jq -r .loss_images $vit) (dense $(jq -r '.dense_loss*1e6|round/1e6' $vit)),"
  echo "outside both sets, after compressing with each plan without refit. Geo with groups of up to 2 and up to 3 layers."
  echo
  echo "| ratio | plans | Spearman ρ of ½δᵀĤδ (K-FAC) vs measured ΔL |"
  echo "|---:|---:|---:|"
  jq -r '.by_ratio[] | "| \(.ratio) | \(.plans) | \(.spearman_kfac_quadratic*1000|round/1000) |"' $vit
  echo
  echo "| plan | measured ΔL | ½δᵀĤδ, K-FAC |"
  echo "|---|---:|---:|"
  jq -r '.rows[] | "| \(.plan) | \(.measured*1e6|round/1e6) | \(.quadratic_kfac*1e6|round/1e6) |"' $vit
} > bench/fidelity.md
cat bench/fidelity.md | head -20
