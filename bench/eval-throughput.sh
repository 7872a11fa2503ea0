#!/usr/bin/env bash
# Evaluation throughput of the bundled GPT-2 on the whole test split (the evaluation protocol), in one run:
# the default batch (as many windows as keep the logits under 16 MB: 2 here) against 8 windows per pass.
# Writes bench/results/eval-gpt2-test*.json and bench/eval-throughput.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./geoshare eval --model assets/models/gpt2-kjv-brown --data assets/data/corpus/test.txt --json bench/results/eval-gpt2-test.json
./geoshare eval --model assets/models/gpt2-kjv-brown --data assets/data/corpus/test.txt --batch-size 8 --json bench/results/eval-gpt2-test-batch8.json
a=bench/results/eval-gpt2-test.json b=bench/results/eval-gpt2-test-batch8.json
{
  echo "# Evaluation throughput: GPT-2 (bundled), test split"
  echo
  echo "Regenerate: \`bench/eval-throughput.sh\` ($(date -u +%Y-%m-%d), $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))."
  echo
  echo "| run | windows/pass | perplexity | tokens | seconds | tokens/s |"
  echo "|---|---:|---:|---:|---:|---:|"
  for f in $a $b; do
    jq -r --arg f "$f" '"| `\($f)` | \(if $f|test("batch8") then 8 else "auto (2)" end) | \(.perplexity*10000|round/10000) | \(.windows*.window) | \(.wall_seconds*10|round/10) | \(.tokens_per_second|round) |"' "$f"
  done
  echo
  echo "Ratio (auto / 8 windows per pass): $(jq -n --slurpfile x $a --slurpfile y $b '($x[0].tokens_per_second/$y[0].tokens_per_second)*100|round/100')×."
  echo "Tokens/s counts every input token (windows × 256). Both runs go through the \`geoshare\` launcher, which preloads"
  echo "jemalloc. Under glibc the gap came from each pass's logits tensor (8 MB a window) being returned to the kernel and"
  echo "faulted in again. With jemalloc the gap remains, and its cause has not been profiled further."
} > bench/eval-throughput.md
cat bench/eval-throughput.md
