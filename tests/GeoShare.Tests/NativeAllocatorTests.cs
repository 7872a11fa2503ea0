using System.Runtime.InteropServices;

namespace GeoShare.Tests;

public class NativeAllocatorTests
{
    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2 { public nuint Arena, OrdBlks, SmBlks, HBlks, HBlkHd, UsmBlks, FsmBlks, UordBlks, FordBlks, KeepCost; }

    [DllImport("libc", EntryPoint = "mallinfo2")] private static extern MallInfo2 MallInfo();
    [DllImport("libc", EntryPoint = "malloc")] private static extern nint Malloc(nuint size);
    [DllImport("libc", EntryPoint = "free")] private static extern void Free(nint p);

    [Fact]
    public void TensorSizedBlocksStayMappedAfterOneIsFreed()
    {
        // The library's tuning, not another allocator or GEOSHARE_ALLOCATOR=default, is what this host runs on.
        Assert.Equal("glibc", NativeAllocator.Name);
        const nuint size = 4 << 20;
        // glibc's default would raise its mmap threshold on this free and serve the next block from the heap.
        Free(Malloc(size));
        nuint mappedBefore = MallInfo().HBlks;
        nint block = Malloc(size);
        nuint mappedAfter = MallInfo().HBlks;
        Free(block);
        Assert.Equal(mappedBefore + 1, mappedAfter);
    }
}
