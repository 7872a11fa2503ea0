#!/usr/bin/env python3
"""bench/onnx.md from the JSON records of bench/onnx.sh (export, eval --runtime onnx, eval): one table per question."""
import glob, json, os, sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench/results/onnx"
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None

names = ["gpt2", "gpt2-geo-30", "gpt2-geo-50", "llama", "llama-geo-30", "llama-geo-50"]
mib = lambda b: f"{b / 2**20:.1f}"

def checkpoint_bytes(folder):
    files = glob.glob(os.path.join(folder, "*.safetensors"))
    return sum(os.path.getsize(f) for f in files) if files else None

print("# ONNX export: ONNX Runtime against GeoShare's eval on the bundled models\n")
print("Regenerate: `bench/onnx.sh` (compress geo 0.3 and 0.5, `geoshare export`, then `geoshare eval --runtime onnx` and")
print("`geoshare eval` on the whole test split, 1031 windows of 256 tokens, each evaluation its own process, `--threads 1`")
print("for both runtimes). Peak resident memory is the process's VmHWM (`memory.peak_resident_bytes`); the model's share is")
print("what loading added (`model_resident_bytes`). The machine's 2 cores were shared with other work during the run, so")
print("tokens/s are comparable within a row (the two runtimes ran back to back) more than across rows. The `-f16` rows")
print("are the geo 0.3 folders exported again with `--save-dtype float16` (sizes only; not evaluated).\n")

print("## Perplexity and speed, same folder, same threads\n")
print("| model | GeoShare perplexity | ONNX Runtime perplexity | relative difference | GeoShare tokens/s | ONNX Runtime tokens/s | speed-up | GeoShare peak MiB | ONNX Runtime peak MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for n in names:
    lib, ort = load(n + "-lib"), load(n + "-ort")
    if not (lib and ort): continue
    rel = abs(ort["perplexity"] - lib["perplexity"]) / lib["perplexity"]
    print(f"| {n} | {lib['perplexity']:.6f} | {ort['perplexity']:.6f} | {rel:.1e} | {lib['tokens_per_second']:.0f} | {ort['tokens_per_second']:.0f} | "
          f"{ort['tokens_per_second'] / lib['tokens_per_second']:.2f}× | {mib(lib['memory']['peak_resident_bytes'])} | {mib(ort['memory']['peak_resident_bytes'])} |")
lib, ort = load("vit-lib"), load("vit-ort")
if lib and ort:
    print(f"\nViT (Fashion-MNIST t10k, {lib['images']} images): GeoShare accuracy {lib['accuracy']:.4f} ({lib['correct']} correct), "
          f"ONNX Runtime {ort['accuracy']:.4f} ({ort['correct']} correct); mean NLL {lib['mean_nll']:.6f} and {ort['mean_nll']:.6f}; "
          f"{lib['images_per_second']:.1f} and {ort['images_per_second']:.1f} images/s; peak {mib(lib['memory']['peak_resident_bytes'])} and "
          f"{mib(ort['memory']['peak_resident_bytes'])} MiB.")

print("\n## File sizes\n")
print("| model | dtype | parameters | parameter bytes | checkpoint (safetensors) bytes | ONNX bytes | ONNX − parameters | initializers | read by more than one module |")
print("|---|---|---|---|---|---|---|---|---|")
for n in names[:3] + ["gpt2-geo-30-f16"] + names[3:] + ["llama-geo-30-f16", "vit"]:
    e = load(n + "-export")
    if not e: continue
    ck = checkpoint_bytes(e["model"])
    print(f"| {n} | {e['dtype']} | {e['parameters']:,} | {e['parameter_bytes']:,} | {ck:,} | {e['file_bytes']:,} | {100 * e['size_overhead']:+.2f}% | {e['initializers']} | {e['shared_initializers']} |"
          if ck else f"| {n} | {e['dtype']} | {e['parameters']:,} | {e['parameter_bytes']:,} | — | {e['file_bytes']:,} | {100 * e['size_overhead']:+.2f}% | {e['initializers']} | {e['shared_initializers']} |")
print("\nThe compressed folders are written in float32 by `geoshare compress` (the dense checkpoints are float16), and the")
print("export keeps each folder's dtype, so a geo file is larger than the dense one until it is exported with")
print("`--save-dtype float16` (its evaluation then differs from `eval`'s by the rounding of the weights).")

rows = [(load(n + "-lib"), load(n + "-ort")) for n in names]
rows = [(a, b) for a, b in rows if a and b]
if rows:
    rel = max(abs(b["perplexity"] - a["perplexity"]) / a["perplexity"] for a, b in rows)
    speed = [b["tokens_per_second"] / a["tokens_per_second"] for a, b in rows]
    extra = [(b["memory"]["peak_resident_bytes"] - a["memory"]["peak_resident_bytes"]) / 2**20 for a, b in rows]
    print("\n## Reading\n")
    print(f"- ONNX Runtime's test perplexity equals `eval`'s within {rel:.1e} relative on all {len(rows)} language models (the")
    print("  acceptance bound is 1e-4); the ViT's accuracy is identical (the same number of test images right).")
    print(f"- With one thread each, ONNX Runtime evaluates {min(speed):.2f}–{max(speed):.2f}× as many tokens per second as GeoShare's")
    print("  libtorch path on the same folder.")
    print(f"- Its process peaks {min(extra):.0f}–{max(extra):.0f} MiB higher. That process holds both runtimes: ONNX Runtime's session")
    print("  (its copy of the weights, float32 casts of float16 ones folded at load, its arena) and libtorch, which the shared")
    print("  protocol still uses for the cross-entropy over the returned logits, which are copied out of ONNX Runtime per batch.")
    print("  The split of that difference between these parts was not measured.")
