#!/usr/bin/env bash
# all-MiniLM-L6-v2 (scripts/fetch-minilm.sh) compressed by every heuristic and geo at equal parameter budgets: the cells
# are `geoshare bench --models minilm`'s (one `geoshare compress --eval` each, JSON in bench/results/minilm/minilm-METHOD-RATIO.json;
# a finished cell is kept, so the sweep resumes). The compressed model's embeddings of the first 200 test sentences are
# compared with the dense model's (mean cosine, 10-NN agreement). Then geo at 0.3 is saved, its file measured and the
# saved folder reloaded and evaluated, and bench/minilm.py writes bench/minilm.md (with bench/results/minilm/fidelity.json,
# `GeoShare.Bench fidelity-sentences`, when it exists).
# Usage: bench/minilm.sh [RATIOS] [METHODS]   (comma-separated, as `geoshare bench` takes them)
set -euo pipefail
cd "$(dirname "$0")/.."
model=assets/models/minilm
[ -f "$model/model.safetensors" ] || scripts/fetch-minilm.sh
out=bench/results/minilm
geoshare="${GEOSHARE:-./geoshare}"
args=(--models minilm --results "$out" --out "$out/report")
[ -n "${1:-}" ] && args+=(--ratios "$1")
[ -n "${2:-}" ] && args+=(--methods "$2")
nice "$geoshare" bench "${args[@]}"

# geo at 0.3 saved (outside the repository) and reloaded: the file's size against the dense one's, the reloaded model's quality
saved="${GEO30:-/tmp/minilm-geo-30}"
if [ ! -f "$out/reload-geo-0.3.json" ] || [ ! -f "$out/saved-geo-0.3.sizes.json" ]; then
  nice "$geoshare" compress --model "$model" --data assets/data/sentences/valid.txt --calib-windows 64 --calib-stride 40 --ratio 0.3 --method geo \
    --curvature-windows 32 --curvature-stride 90 --out "$saved" --force > /dev/null
  nice "$geoshare" eval --model "$saved" --sentences assets/data/sentences/test.txt --against "$model" --limit 200 --json "$out/reload-geo-0.3.json" > /dev/null
  python3 - "$model" "$saved" "$out/saved-geo-0.3.sizes.json" <<'EOF'
import json, os, struct, sys
dense, saved, dest = sys.argv[1:]
def entries(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))
pooler = sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in entries(f"{dense}/model.safetensors").items() if k.startswith("pooler."))
json.dump({"dense_file_bytes": os.path.getsize(f"{dense}/model.safetensors"), "dense_pooler_bytes": pooler,
           "compressed_file_bytes": os.path.getsize(f"{saved}/model.safetensors"),
           "compressed_folder": f"{saved} (bench/minilm.sh, geo at 0.3, F32)"}, open(dest, "w"), indent=2)
EOF
fi
python3 bench/minilm.py
