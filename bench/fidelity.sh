#!/usr/bin/env bash
# Fidelity of Geo-Sharing's cost model: predicted vs measured increase of calibration loss over 40 sharing plans of
# GPT-2 (9 heuristics × ratios 0.1–0.4, and geo with each curvature at 0.2 and 0.4), for the exact and K-FAC block
# models; and the cross-layer part of δᵀHδ that the block-diagonal model ignores. Writes bench/results/fidelity.json
# and bench/fidelity.md.
set -euo pipefail
cd "$(dirname "$0")/.."
json=bench/results/fidelity.json
[ -s "$json" ] || dotnet run -c Release --project bench/GeoShare.Bench -- fidelity "$json"
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
  echo "| predicted (⟨g, δ⟩ + ½δᵀĤδ) | $(jq -r '.spearman.exact*1000|round/1000' $json) | $(jq -r '.spearman.kfac*1000|round/1000' $json) |"
  echo "| quadratic term only (½δᵀĤδ) | $(jq -r '.spearman.exact_quadratic_only*1000|round/1000' $json) | $(jq -r '.spearman.kfac_quadratic_only*1000|round/1000' $json) |"
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
  echo "| plan | measured ΔL | predicted, exact | predicted, K-FAC |"
  echo "|---|---:|---:|---:|"
  jq -r '.rows[] | "| \(.plan) | \(.measured*1e5|round/1e5) | \(.predicted_exact*1e5|round/1e5) | \(.predicted_kfac*1e5|round/1e5) |"' $json
} > bench/fidelity.md
cat bench/fidelity.md | head -20
