"""bench/allocator.md from bench/results/allocator/*.json (written by bench/allocator.sh)."""
import json, pathlib, statistics, sys

out, day, cores, load, *commands = sys.argv[1:]
runs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(out).glob("*.json"))]
names = {"fresh": "fresh machine (`./geoshare`, tuned glibc)", "dotnet-run": "`dotnet run` (tuned glibc)",
         "library": "library host (GeoShare.Bench, tuned glibc)", "jemalloc": "jemalloc preloaded (old launcher)",
         "old": "glibc defaults + 512 MB top pad (old fresh path)"}
def med(w, e, key):
    xs = [r[key] if key != "cpu" else r["user_seconds"] + r["system_seconds"] for r in runs if r["workload"] == w and r["entry"] == e]
    return statistics.median(xs) if xs else None, xs
print("# The native allocator: fresh machine against jemalloc\n")
print(f"Regenerate: `bench/allocator.sh` ({day}, {cores} cores, load average at the end {load}). The machine was shared")
print("with other jobs the whole time (load average 20-30 on 2 cores), so each process got a fraction of a core: absolute")
print("times are several times an idle machine's, and the runs were interleaved (entry points in turn, the order reversed")
print("in the second round) so that the load hits all alike. Medians over the rounds; each run is its own process, timed")
print("by /usr/bin/time (peak resident = its \"Maximum resident set size\").\n")
for c in commands: print(f"- {c}")
print("\nRatios are against jemalloc (the best configuration found in time and memory); a tuned-glibc entry passes at")
print("≤ 1.15× in time and ≤ 1.25× in peak resident memory. CPU = user + system seconds, less sensitive to the load than wall.\n")
print("| workload | entry point | wall s (runs) | CPU s | peak resident MB | minor faults | wall / jemalloc | CPU / jemalloc | peak / jemalloc | verdict |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for w in ["eval", "analyze", "plan"]:
    jw, _ = med(w, "jemalloc", "wall_seconds"); jc, _ = med(w, "jemalloc", "cpu"); jm, _ = med(w, "jemalloc", "peak_resident_kb")
    if jw is None: continue
    for e in ["fresh", "dotnet-run", "library", "jemalloc", "old"]:
        wall, walls = med(w, e, "wall_seconds")
        if wall is None: continue
        cpu, _ = med(w, e, "cpu"); mem, _ = med(w, e, "peak_resident_kb"); flt, _ = med(w, e, "minor_faults")
        rw, rc, rm = wall / jw, cpu / jc, mem / jm
        verdict = "" if e in ("jemalloc", "old") else ("pass" if rw <= 1.15 and rm <= 1.25 else "FAIL") + f" (time {'≤' if rw <= 1.15 else '>'} 1.15, memory {'≤' if rm <= 1.25 else '>'} 1.25)"
        print(f"| {w} | {names[e]} | {wall:.1f} ({', '.join(f'{x:.1f}' for x in walls)}) | {cpu:.1f} | {mem/1024:.0f} | {flt:,.0f} | {rw:.2f}× | {rc:.2f}× | {rm:.2f}× | {verdict} |")
