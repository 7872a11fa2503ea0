using System.Runtime.InteropServices;

namespace GeoShare.Tests;

public class NativeAllocatorTests
{
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
        nint block = Malloc(size);
        // glibc's chunk header, the word before the block, has IS_MMAPPED (0x2) set for a block with its own mapping.
        // (The process-wide mapped-block count of mallinfo2 is not used: other test threads allocate at the same time.)
        bool mapped = (Marshal.ReadInt64(block - 8) & 2) != 0;
        Free(block);
        Assert.True(mapped, "a 4 MB block freed and allocated again came from the heap, not its own mapping");
    }
}
