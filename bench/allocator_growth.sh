#!/usr/bin/env bash
# Is the resident set bounded over many passes? A library host (GeoShare.Bench eval-library) evaluates WINDOWS test
# windows of the bundled GPT-2 (batched forward passes) on each allocator in turn; the resident set (VmRSS) is sampled
# every SAMPLE seconds. Writes bench/results/allocator_growth/<entry>.json (the samples); bench/allocator_table.py
# summarises them in bench/allocator.md (run this before bench/allocator.sh).
# OMP_NUM_THREADS, when set, applies to every run.
#   WINDOWS (200)  SAMPLE (1)  ENTRIES ("caching jemalloc glibc")
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/allocator_growth
windows=${WINDOWS:-200}; sample=${SAMPLE:-1}; entries=${ENTRIES:-caching jemalloc glibc}
dotnet build GeoShare.sln -c Release -v q --nologo >/dev/null
rm -rf "$out"; mkdir -p "$out"
bench=bench/GeoShare.Bench/bin/Release/net10.0/linux-x64/GeoShare.Bench.dll
for e in $entries; do
  case $e in
    caching)  env=(env -u LD_PRELOAD -u GEOSHARE_ALLOCATOR) ;;
    glibc)    env=(env -u LD_PRELOAD GEOSHARE_ALLOCATOR=glibc) ;;
    jemalloc) env=(env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:5000,muzzy_decay_ms:0) ;;
  esac
  echo "growth: $e ($windows windows)" >&2
  "${env[@]}" dotnet "$bench" eval-library assets/models/gpt2-kjv-brown assets/data/corpus/test.txt "$windows" > "$out/$e.txt" 2>&1 &
  pid=$!; samples=()
  while kill -0 $pid 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null || true)
    [ -n "$rss" ] && samples+=("$rss")
    sleep "$sample"
  done
  wait $pid
  printf '{"entry": "%s", "windows": %d, "sample_seconds": %s, "rss_kb": [%s]}\n' "$e" "$windows" "$sample" "$(IFS=,; echo "${samples[*]}")" > "$out/$e.json"
  tail -n 1 "$out/$e.txt" >&2
done
