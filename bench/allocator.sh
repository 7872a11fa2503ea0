#!/usr/bin/env bash
# The native allocator, side by side in one run: the fresh-machine path (`geoshare` with nothing set: the library's
# caching allocator) against jemalloc preloaded by hand (the launcher's old setting, the best found before),
# the library's caching allocator named explicitly (GEOSHARE_ALLOCATOR=caching) and tuned glibc (libtorch's own allocator, GEOSHARE_ALLOCATOR=glibc: the library's path
# before the caching allocator), for eval, a float64 analyze of two blocks and (WORKLOADS) a K-FAC plan of the
# bundled GPT-2; eval also through `dotnet run` and a library host (GeoShare.Bench eval-library). Every run is its
# own process, timed by /usr/bin/time (wall, CPU, peak resident set, minor page faults); ROUNDS rounds, the order
# reversed in every other round. Writes bench/results/allocator/*.json and bench/allocator.md.
# OMP_NUM_THREADS, when set, applies to every run (on a loaded machine libgomp's spinning threads inflate CPU time).
#   ROUNDS (2)  EVAL_WINDOWS (16)  ANALYZE_WINDOWS (1)  ANALYZE_TOP (2)  PLAN_CALIB_WINDOWS (16)
#   WORKLOADS ("eval analyze plan")
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/allocator
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rounds=${ROUNDS:-2}; ew=${EVAL_WINDOWS:-16}; aw=${ANALYZE_WINDOWS:-1}; at=${ANALYZE_TOP:-2}; pw=${PLAN_CALIB_WINDOWS:-16}
workloads=${WORKLOADS:-eval analyze plan}
dotnet build GeoShare.sln -c Release -v q --nologo >/dev/null
rm -rf "$out"; mkdir -p "$out"
model=assets/models/gpt2-kjv-brown
cli=src/GeoShare.Cli/bin/Release/net10.0/linux-x64/GeoShare.Cli
jemalloc=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -f "$jemalloc" ] || { echo "allocator.sh: $jemalloc is needed for the comparison (apt-get install libjemalloc2)" >&2; exit 3; }
declare -A args=(
  [eval]="eval --model $model --data assets/data/corpus/test.txt --limit $ew"
  [analyze]="analyze --model $model --data assets/data/corpus/valid.txt --windows $aw --stride 1 --dtype float64 --params transformer.h.5.mlp.c_fc.weight,transformer.h.5.attn.c_attn.weight --top $at --plots $tmp/plots"
  [plan]="plan --model $model --data assets/data/corpus/valid.txt --ratio 0.3 --calib-windows $pw --out $tmp/plan.json --plots $tmp/plots"
)
# entry point -> how it is started
run() { # workload entry round
  local w=$1 e=$2 r=$3 cmd
  case $e in
    fresh)     cmd=(env -u LD_PRELOAD -u GEOSHARE_ALLOCATOR "$cli") ;;          # the default: the library's caching allocator
    caching)   cmd=(env -u LD_PRELOAD GEOSHARE_ALLOCATOR=caching "$cli") ;;       # the library's caching allocator: what a program using the library gets
    glibc)     cmd=(env -u LD_PRELOAD GEOSHARE_ALLOCATOR=glibc "$cli") ;;         # tuned glibc: the library's path before
    jemalloc)  cmd=(env LD_PRELOAD=$jemalloc MALLOC_CONF=dirty_decay_ms:5000,muzzy_decay_ms:0 "$cli") ;;
    dotnet-run) cmd=(env -u LD_PRELOAD -u GEOSHARE_ALLOCATOR dotnet run --project src/GeoShare.Cli -c Release --no-build --) ;;
    library)   cmd=(env -u LD_PRELOAD -u GEOSHARE_ALLOCATOR dotnet bench/GeoShare.Bench/bin/Release/net10.0/linux-x64/GeoShare.Bench.dll eval-library $model assets/data/corpus/test.txt $ew) ;;
  esac
  [ $e = library ] && set -- || set -- ${args[$w]}
  echo "round $r: $w $e" >&2
  /usr/bin/time -o "$out/$w-$e-$r.json" -f "{\"workload\": \"$w\", \"entry\": \"$e\", \"round\": $r, \"wall_seconds\": %e, \"user_seconds\": %U, \"system_seconds\": %S, \"peak_resident_kb\": %M, \"minor_faults\": %R, \"exit\": %x}" \
    "${cmd[@]}" "$@" > "$tmp/$w-$e-$r.out" 2>&1 || { cat "$tmp/$w-$e-$r.out" >&2; exit 1; }
  tail -n 4 "$tmp/$w-$e-$r.out" > "$out/$w-$e-$r.txt"
}
for r in $(seq 1 "$rounds"); do
  for w in $workloads; do
    entries=(fresh jemalloc caching glibc); [ $w = eval ] && entries+=(dotnet-run library)
    if (( r % 2 == 0 )); then mapfile -t entries < <(printf '%s\n' "${entries[@]}" | tac); fi
    for e in "${entries[@]}"; do run $w $e $r; done
  done
done
python3 bench/allocator_table.py "$out" "$(date -u +%Y-%m-%d)" "$(nproc --all)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "threads per run: ${OMP_NUM_THREADS:-all cores, the libtorch default}" "eval: ${args[eval]}" "analyze: ${args[analyze]/--plots $tmp\/plots/}" "plan: ${args[plan]/--out $tmp\/plan.json --plots $tmp\/plots/}" > bench/allocator.md
cat bench/allocator.md
