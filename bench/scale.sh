#!/usr/bin/env bash
# bench/scale.md's runs. Usage:
#   bench/scale.sh fixtures            # write the random-weight fixtures into bench/fixtures/ (ignored by git)
#   bench/scale.sh compare             # bundled GPT-2 and LLaMA at 0.3 and 0.5: geo with full vs screened costing, test perplexity
#   bench/scale.sh plan NAME RATIO COSTING   # one timed plan of a fixture (or bundled model), /usr/bin/time -v
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
    name=$2; ratio=$3; costing=$4
    model=bench/fixtures/$name; [ -d "$model" ] || model=assets/models/$name
    timed "plan-$name-$ratio-$costing" ./geoshare plan --model "$model" --data assets/data/corpus/valid.txt --ratio "$ratio" --costing "$costing" \
        --out /tmp/geoshare-scale-plan-$name.json --plots /tmp/geoshare-scale-plots-$name --json $out/plan-$name-$ratio-$costing.json ;;
*) sed -n 2,7p "$0"; exit 2 ;;
esac
