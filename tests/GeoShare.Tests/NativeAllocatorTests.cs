using GeoShare.Evaluation;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

public class NativeAllocatorTests
{
    [DllImport("libc", EntryPoint = "malloc")] private static extern nint Malloc(nuint size);
    [DllImport("libc", EntryPoint = "free")] private static extern void Free(nint p);

    /// <summary>The address of a tensor's first element (the accessor behind <c>bytes</c> keeps the block alive until
    /// it is finalized: only for tensors the test does not free).</summary>
    private static unsafe long DataPointer(Tensor t)
    {
        using var first = t.flatten().narrow(0, 0, 1);
        fixed (byte* p = first.bytes) return (long)p;
    }

    [Fact]
    public void TensorSizedBlocksStayMappedAfterOneIsFreed()
    {
        // The library's choice, not jemalloc or GEOSHARE_ALLOCATOR=glibc/default, is what this host runs on: the caching
        // allocator for libtorch's tensors, and glibc (tuned) for every other malloc.
        Assert.True(NativeAllocator.Name == "caching", NativeAllocator.CachingUnavailable);
        const nuint size = 4 << 20;
        // glibc's default would raise its mmap threshold on this free and serve the next blocks from the heap.
        Free(Malloc(size));
        // Eight blocks held at once: a block may still come from a free chunk that other test threads left in this arena's
        // heap (then it is not mapped, tuned or not), but not all of them unless that heap holds 16 MB free; under the
        // default every one comes from the heap.
        var blocks = Enumerable.Range(0, 8).Select(_ => Malloc(size)).ToArray();
        // glibc's chunk header, the word before the block, has IS_MMAPPED (0x2) set for a block with its own mapping.
        // (The process-wide mapped-block count of mallinfo2 is not used: other test threads allocate at the same time.)
        int mapped = blocks.Count(b => (Marshal.ReadInt64(b - 8) & 2) != 0);
        foreach (var b in blocks) Free(b);
        Assert.True(mapped >= 5, $"only {mapped} of 8 blocks of 4 MB allocated after one was freed had their own mapping");
    }

    [Fact]
    public void TensorsOfEverySizeComeFromTheCachingAllocator()
    {
        Assert.True(NativeAllocator.Name == "caching", NativeAllocator.CachingUnavailable);
        // Around the 128 KB boundary between glibc-served and mapped blocks, page and size-class edges, and large.
        long[] elements = [1, 2, 15, 16, 17, 1000, 32_752, 32_768, 32_769, 65_536, 262_143, 1 << 20, (1 << 20) + 1, 3_000_001, 9 << 20];
        foreach (long n in elements)
        {
            var before = NativeAllocator.ThreadStats();
            using var t = Scalars.Arange(n, ScalarType.Int32);
            var after = NativeAllocator.ThreadStats();
            Assert.Equal(before.Allocations + 1, after.Allocations); // arange allocates its output once, on this thread
            Assert.Equal((ulong)(n * 4), after.LastBytes);
            long data = DataPointer(t);
            Assert.Equal((ulong)data, after.LastData);
            Assert.Equal(0, data % 64); // c10's alignment
            // Every element written and read back: the block really is n floats long.
            Assert.Equal(n * (n - 1) / 2, t.sum(type: ScalarType.Int64).item<long>());
            Assert.Equal(n - 1, t[n - 1].item<int>());
        }
    }

    [Fact]
    public void FreedTensorIsFreedByItAndItsBlockReused()
    {
        Assert.True(NativeAllocator.Name == "caching", NativeAllocator.CachingUnavailable);
        var start = NativeAllocator.ThreadStats();
        var a = torch.ones(3 << 20, dtype: ScalarType.Float32); // 12 MB
        ulong first = NativeAllocator.ThreadStats().LastData; // (no C# view of a: a TensorAccessor would keep it alive)
        Assert.Equal(start.Allocations + 1, NativeAllocator.ThreadStats().Allocations);
        a.Dispose();
        var freed = NativeAllocator.ThreadStats();
        Assert.Equal(start.Frees + 1, freed.Frees);
        using var b = torch.zeros(3 << 20, dtype: ScalarType.Float32);
        var reused = NativeAllocator.ThreadStats();
        Assert.Equal(freed.CacheHits + 1, reused.CacheHits);
        Assert.Equal(first, reused.LastData); // the same block, handed out again
        Assert.Equal((ulong)DataPointer(b), reused.LastData);
        Assert.Equal(0.0, b.abs().max().item<float>()); // and zeros() wrote over what ones() left in it
    }

    /// <summary>The allocator's bound: mapped (in use + cached) ≤ the peak in use + max(1/8 of it, 256 MB).</summary>
    private static void AssertMappedWithinBound(string where)
    {
        var s = NativeAllocator.Stats();
        ulong slack = Math.Max(s.PeakLargeBytesInUse / 8, 256UL << 20);
        Assert.True(s.LargeBytesInUse + s.CachedBytes <= s.PeakLargeBytesInUse + slack,
            $"{where}: {s.LargeBytesInUse} B in use + {s.CachedBytes} B cached over the peak {s.PeakLargeBytesInUse} B + {slack} B");
    }

    [Fact]
    public void CacheStaysWithinThePeakInUsePlusItsSlack()
    {
        Assert.True(NativeAllocator.Name == "caching", NativeAllocator.CachingUnavailable);
        // 300 blocks of distinct sizes, 1-4 MB, none reused: without a bound the cache would keep every one (600 MB).
        for (int i = 0; i < 300; i++)
        {
            using (var t = torch.empty((1 << 18) + i * 2600, dtype: ScalarType.Float32)) t.fill_(Scalars.One);
            AssertMappedWithinBound($"pass {i}");
        }
        var end = NativeAllocator.Stats();
        Assert.True(end.Unmappings > 0, "no cached block was ever returned to the kernel");
        ulong released = NativeAllocator.ReleaseCache();
        Assert.True(released > 0 || end.CachedBytes == 0);
    }

    [Fact]
    public void ABlockGivenUpForAnotherSizeIsResizedAndServesIt()
    {
        Assert.True(NativeAllocator.Name == "caching", NativeAllocator.CachingUnavailable);
        // Blocks of growing sizes, each two size classes above the last (no cache hit) and freed at once: the cached ones
        // pass the 256 MB slack within a few steps, and a request must then give one up. torch.empty touches no page, so
        // the gigabytes are address space only.
        var start = NativeAllocator.ThreadStats();
        Tensor? served = null;
        double elements = 8 << 20; // 32 MB of floats
        for (int i = 0; i < 20 && served is null; i++, elements *= 1.3)
        {
            var before = NativeAllocator.ThreadStats();
            var t = torch.empty((long)elements, dtype: ScalarType.Float32);
            var after = NativeAllocator.ThreadStats();
            AssertMappedWithinBound($"step {i}");
            if (after.Remaps == before.Remaps + 1) served = t;
            else t.Dispose();
        }
        Assert.True(served is not null, $"no request of 20 resized a cached block (thread remaps {NativeAllocator.ThreadStats().Remaps - start.Remaps})");
        using (served)
        {
            // The resized block is the tensor's: its pointer and size, and its first and last 64 KB written and read back
            // (its own end, not the old block's; the whole block may be gigabytes where the process's peak is high).
            var last = NativeAllocator.ThreadStats();
            Assert.Equal((ulong)DataPointer(served), last.LastData);
            Assert.Equal((ulong)(served.numel() * 4), last.LastBytes);
            long n = served.numel();
            foreach (var part in new[] { served.narrow(0, 0, 16384), served.narrow(0, n - 16384, 16384) })
                using (part)
                {
                    part.fill_(Scalars.One);
                    Assert.Equal(16384L, part.sum(type: ScalarType.Int64).item<long>());
                }
        }
    }

    [Fact]
    public void EvalPrintsTheSameNumbersOnGlibcAndOnTheCachingAllocator()
    {
        using var tmp = new TempDir();
        string[] args = ["eval", "--model", Repo.Gpt2, "--data", Repo.Corpus("test"), "--limit", "2"];
        var runs = new Dictionary<string, EvalOutput>();
        foreach (string allocator in new[] { "glibc", "caching" })
        {
            string json = tmp.File(allocator + ".json");
            var r = GeoshareProcess.Run(new Dictionary<string, string> { ["GEOSHARE_ALLOCATOR"] = allocator }, [.. args, "--json", json]);
            Assert.True(r.ExitCode == 0, r.Stderr);
            runs[allocator] = JsonOutput.Read<EvalOutput>(json);
            Assert.Equal(allocator, runs[allocator].Memory!.Allocator);
        }
        Assert.Equal(runs["glibc"].MeanNll, runs["caching"].MeanNll); // bit for bit
        Assert.Equal(runs["glibc"].Perplexity, runs["caching"].Perplexity);
    }
}
