#!/usr/bin/env bash
# ONNX Runtime against GeoShare's own eval on the bundled models, side by side in one run: dense, geo 0.3 and geo 0.5
# GPT-2 and LLaMA (and the dense ViT), each exported with `geoshare export` and evaluated on the whole test split by
# `geoshare eval --runtime onnx` and by `geoshare eval`, every evaluation in its own process with the same threads (1).
# Writes bench/results/onnx/*.json and bench/onnx.md (bench/onnx_table.py). About 45 minutes on 2 busy cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/onnx
work=${ONNX_BENCH_WORK:-$(mktemp -d)}
rm -rf "$out"; mkdir -p "$out"
test=assets/data/corpus/test.txt
declare -A folder=([gpt2]=assets/models/gpt2-kjv-brown [llama]=assets/models/llama-kjv-brown)
models=()
for m in gpt2 llama; do
  models+=("$m:${folder[$m]}")
  for ratio in 30 50; do
    ./geoshare compress --model "${folder[$m]}" --data assets/data/corpus/valid.txt --ratio "0.$ratio" --method geo --out "$work/$m-geo-$ratio" --threads 1
    models+=("$m-geo-$ratio:$work/$m-geo-$ratio")
  done
done
for entry in "${models[@]}" vit:assets/models/vit-fashion-mnist; do
  n=${entry%%:*}; d=${entry#*:}
  ./geoshare export --model "$d" --onnx "$work/$n.onnx" --json "$out/$n-export.json"
done
for m in gpt2 llama; do
  ./geoshare export --model "$work/$m-geo-30" --onnx "$work/$m-geo-30-f16.onnx" --save-dtype float16 --json "$out/$m-geo-30-f16-export.json"
done
for entry in "${models[@]}"; do
  n=${entry%%:*}; d=${entry#*:}
  ./geoshare eval --runtime onnx --model "$work/$n.onnx" --data $test --threads 1 --json "$out/$n-ort.json"
  ./geoshare eval --model "$d" --data $test --threads 1 --json "$out/$n-lib.json"
done
./geoshare eval --runtime onnx --model "$work/vit.onnx" --fashion-mnist /usr/share/datasets/fashion-mnist --threads 1 --json "$out/vit-ort.json"
./geoshare eval --model assets/models/vit-fashion-mnist --fashion-mnist /usr/share/datasets/fashion-mnist --threads 1 --json "$out/vit-lib.json"
python3 bench/onnx_table.py "$out" > bench/onnx.md   # reads the folders in $work for the checkpoint sizes
