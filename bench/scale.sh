#!/usr/bin/env bash
# bench/scale.md's runs. Usage:
#   bench/scale.sh fixtures            # write the random-weight fixtures into bench/fixtures/ (ignored by git)
#   bench/scale.sh compare             # bundled GPT-2 and LLaMA at 0.3 and 0.5: geo with full vs screened costing, test perplexity
#   bench/scale.sh plan NAME RATIO COSTING [TAG OPTION…]   # one timed plan of a fixture (or bundled model), /usr/bin/time -v;
#                                      # TAG names the run's extra plan options (e.g. stream --streaming on)
#   bench/scale.sh kfac NAME WINDOWS   # K-FAC of every projection on the whole graph, then layer by layer: time, peak, ratio, top-λ agreement
# Every run is its own process under /usr/bin/time -v (wall time, peak resident set); JSON into bench/results/scale/.
# The machine is shared with other jobs: times are upper bounds of an idle machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/scale
mkdir -p "$out" bench/fixtures
bench_dll=bench/GeoShare.Bench/bin/Release/net10.0/linux-x64/GeoShare.Bench.dll
[ -f "$bench_dll" ] || dotnet build bench/GeoShare.Bench -c Release >/dev/null

timed() { # LABEL CMD...: runs CMD, appends "LABEL wall_s peak_kb rc" to $out/times.txt
    local label=$1; shift
    local t; t=$(mktemp)
    set +e; /usr/bin/time -v "$@" 2> >(tee "$t" | tr '\r' '\n' | grep -E "^(costing|Geo-Sharing|shard|perplexity)" >&2); local rc=$?; set -e
    sleep 1
    local wall peak
    wall=$(grep "Elapsed (wall clock)" "$t" | awk '{print $NF}')
    peak=$(grep "Maximum resident" "$t" | awk '{print $NF}')
    echo "$label $wall ${peak}KB rc=$rc" | tee -a "$out/times.txt"
    rm -f "$t"
}

case "${1:-}" in
fixtures)
    for f in gpt2-124m llama-32x1024 llama-1b; do
        [ -f bench/fixtures/$f/model.safetensors ] || timed "fixture-$f" dotnet "$bench_dll" fixture $f bench/fixtures/$f
    done ;;
compare)
    for m in gpt2 llama; do
        for r in 0.3 0.5; do
            for c in full screened; do
                j=$out/$m-geo-$r-$c.json
                [ -s "$j" ] && continue
                timed "compress-$m-$r-$c" ./geoshare compress --model assets/models/$m-kjv-brown --data assets/data/corpus/valid.txt --ratio $r \
                    --method geo --costing $c --eval assets/data/corpus/test.txt --out /tmp/geoshare-scale-$m-$r-$c --force --json "$j"
                rm -rf /tmp/geoshare-scale-$m-$r-$c
            done
        done
    done ;;
plan)
    name=$2; ratio=$3; costing=$4; tag=${5:+-$5}; shift 5 2>/dev/null || shift $#
    model=bench/fixtures/$name; [ -d "$model" ] || model=assets/models/$name
    timed "plan-$name-$ratio-$costing$tag" ./geoshare plan --model "$model" --data assets/data/corpus/valid.txt --ratio "$ratio" --costing "$costing" \
        --out /tmp/geoshare-scale-plan-$name.json --plots /tmp/geoshare-scale-plots-$name --json $out/plan-$name-$ratio-$costing$tag.json "$@" ;;
kfac)
    name=$2; windows=$3
    model=bench/fixtures/$name; [ -d "$model" ] || model=assets/models/$name
    for sweep in graph layers; do
        timed "kfac-$name-$windows-$sweep" ./geoshare analyze --model "$model" --data assets/data/corpus/valid.txt --windows "$windows" --method kfac \
            --top 4 --kfac-sweep $sweep --plots /tmp/geoshare-scale-kfac-plots --json $out/kfac-$name-$windows-$sweep.json
    done
    python3 - "$out" "$name" "$windows" <<'PY'
import json, re, sys
out, name, windows = sys.argv[1:]
def load(s): return {b["name"]: b for b in json.load(open(f"{out}/kfac-{name}-{windows}-{s}.json"))["blocks"]}
g, l = load("graph"), load("layers")
diff = max(abs(a - b) / abs(a) for n in g for a, b in zip(g[n]["top_eigenvalues"], l[n]["top_eigenvalues"]))
trace = max(abs(g[n]["trace"] - l[n]["trace"]) / abs(g[n]["trace"]) for n in g)
rows = {}
for line in open(f"{out}/times.txt"):
    m = re.match(rf"kfac-{re.escape(name)}-{windows}-(graph|layers) (\S+) (\d+)KB rc=0", line)
    if m: rows[m[1]] = (m[2], int(m[3]))
print(f"{name}, {windows} windows, {len(g)} blocks: largest relative difference of a top eigenvalue {diff:.1e}, of a trace {trace:.1e}")
if len(rows) == 2:
    print(f"peak RSS graph {rows['graph'][1] / 1e6:.2f} GB, layers {rows['layers'][1] / 1e6:.2f} GB: ratio {rows['graph'][1] / rows['layers'][1]:.2f}; "
          f"wall graph {rows['graph'][0]}, layers {rows['layers'][0]}")
PY
    ;;
*) sed -n 2,8p "$0"; exit 2 ;;
esac
