using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace GeoShare;

/// <summary>
/// glibc's malloc, left to itself, lets the resident size of a long libtorch loop grow without bound
/// (measured here: +200 MB per GPT-2 forward pass of 8 windows) and returns memory to the kernel only to
/// fault it back in. A large top pad keeps freed heap memory for reuse: resident size plateaus (≈0.8 GB
/// for that loop) and passes run faster. Applied once, when the library loads.
/// </summary>
internal static partial class NativeAllocator
{
    private const int M_TOP_PAD = -2;
    private const int TopPadBytes = 512 << 20;

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int MallOpt(int param, int value);

    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255", Justification = "allocator policy must be set before the first tensor is allocated, in every host (CLI, tests, user code)")]
    internal static void Tune()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("MALLOC_TOP_PAD_") is not null) return;
        try { MallOpt(M_TOP_PAD, TopPadBytes); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { /* not glibc: nothing to tune */ }
    }
}
