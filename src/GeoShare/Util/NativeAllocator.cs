using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace GeoShare;

/// <summary>
/// The native allocator under libtorch. jemalloc (preloaded by the `geoshare` launcher when installed, with
/// decay off) reuses the many-megabyte tensors of each pass; glibc's malloc instead returns them to the
/// kernel and faults them back in (about half the time of a GPT-2 Hessian-vector product) and, left to
/// itself, lets the resident size of a long loop grow without bound (+200 MB per pass of 8 windows). Under
/// glibc a large top pad is set when the library loads, which makes the resident size plateau.
/// </summary>
public static partial class NativeAllocator
{
    /// <summary>"jemalloc" when preloaded (the `geoshare` launcher does so when it is installed), else "glibc".</summary>
    public static string Name { get; } = File.Exists("/proc/self/maps") && File.ReadAllText("/proc/self/maps").Contains("libjemalloc") ? "jemalloc" : "glibc";

    private const int M_TOP_PAD = -2;
    private const int TopPadBytes = 512 << 20;

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int MallOpt(int param, int value);

    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255", Justification = "allocator policy must be set before the first tensor is allocated, in every host (CLI, tests, user code)")]
    internal static void Tune()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("MALLOC_TOP_PAD_") is not null || Name != "glibc") return;
        try { MallOpt(M_TOP_PAD, TopPadBytes); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { /* not glibc: nothing to tune */ }
    }
}
