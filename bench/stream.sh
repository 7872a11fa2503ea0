#!/usr/bin/env bash
# bench/scale.md's "Layer-wise streaming" runs: the LLaMA 1B fixture (float32 weights ≈ 4 GB) compressed and evaluated
# layer by layer inside a memory cgroup of LIMIT (default 3G). Usage (root; cgroup v1 or v2):
#   bench/stream.sh 1b [LIMIT] [METHOD]  # compress --method METHOD (adjacent; or geo) --ratio 0.3 --streaming on, then eval --streaming on
#   bench/stream.sh run NAME LIMIT CMD…  # any command in the cgroup, timed
# Each run: /usr/bin/time -v (wall, peak RSS) and the cgroup's peak (v1 memory.max_usage_in_bytes, which counts page
# cache too; v2 memory.peak) and failcnt; one line per run appended to bench/results/scale/stream-times.txt.
# The fixture: bench/scale.sh fixtures (or GeoShare.Bench fixture llama-1b bench/fixtures/llama-1b).
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/scale
mkdir -p "$out"
cli=${GEOSHARE_CLI:-src/GeoShare.Cli/bin/Release/net10.0/linux-x64/GeoShare.Cli}   # GEOSHARE_CLI: a copy, so that a rebuild cannot replace the binary under a long run
./geoshare --help >/dev/null   # build before measuring: no compiler inside the cgroup

cgroup_dir() { # the cgroup of this shell, v1 memory controller or v2
    local line
    line=$(grep -E '^[0-9]+:memory:' /proc/self/cgroup || true)
    if [ -n "$line" ]; then echo "/sys/fs/cgroup/memory${line#*:memory:}"; return; fi
    line=$(grep -E '^0::' /proc/self/cgroup)
    echo "/sys/fs/cgroup${line#0::}"
}

run_limited() { # NAME LIMIT CMD...
    local name=$1 limit=$2; shift 2
    local parent cg t
    parent=$(cgroup_dir)
    cg="$parent/geoshare-$name"
    mkdir -p "$cg"
    if [ -f "$cg/memory.limit_in_bytes" ]; then           # v1
        echo "$limit" > "$cg/memory.limit_in_bytes"
        echo 0 > "$cg/memory.max_usage_in_bytes"; echo 0 > "$cg/memory.failcnt"
    else                                                  # v2
        echo "$limit" > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max" 2>/dev/null || true
    fi
    t=$(mktemp)
    set +e
    sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec /usr/bin/time -v "$@"' sh "$cg" "$@" 2> >(tee "$t" | tr '\r' '\n' | grep -vE "^\s" >&2)
    local rc=$?
    set -e
    sleep 1
    local wall rss peak fail
    wall=$(grep "Elapsed (wall clock)" "$t" | awk '{print $NF}')
    rss=$(grep "Maximum resident" "$t" | awk '{print $NF}')
    if [ -f "$cg/memory.max_usage_in_bytes" ]; then peak=$(cat "$cg/memory.max_usage_in_bytes"); fail=$(cat "$cg/memory.failcnt")
    else peak=$(cat "$cg/memory.peak" 2>/dev/null || echo "?"); fail=$(grep -E '^max ' "$cg/memory.events" | awk '{print $2}'); fi
    echo "$name limit=$limit wall=$wall peak_rss_kb=$rss cgroup_peak_bytes=$peak cgroup_failcnt=$fail rc=$rc" | tee -a "$out/stream-times.txt"
    rm -f "$t"
    rmdir "$cg" 2>/dev/null || true
    return $rc
}

case "${1:-}" in
1b)
    limit=${2:-3G}; method=${3:-adjacent}
    model=bench/fixtures/llama-1b
    [ -f $model/model.safetensors ] || { echo "no $model: run bench/scale.sh fixtures first" >&2; exit 2; }
    suffix=""; [ "$method" = adjacent ] || suffix="-$method"
    run_limited stream-compress-1b$suffix "$limit" "$cli" compress --model $model --data assets/data/corpus/valid.txt --ratio 0.3 \
        --method "$method" --streaming on --calib-windows 4 --out /tmp/geoshare-stream-1b-$method-30 --force \
        --json $out/stream-llama-1b-$method-0.3.json
    run_limited stream-eval-1b$suffix "$limit" "$cli" eval --model /tmp/geoshare-stream-1b-$method-30 --data assets/data/corpus/test.txt \
        --limit 8 --streaming on --json $out/stream-llama-1b-$method-0.3-eval.json ;;
run)
    name=$2; limit=$3; shift 3
    run_limited "$name" "$limit" "$@" ;;
*) sed -n 2,9p "$0"; exit 2 ;;
esac
