using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace GeoShare;

/// <summary>
/// The native allocator under libtorch. The `geoshare` command runs under jemalloc where it is installed
/// (<see cref="PreferJemalloc"/>: the same speed and memory as jemalloc preloaded by hand, bench/allocator.md); any other
/// host (the tests, a user's program) runs on glibc, tuned with mallopt when the library loads: jemalloc's peak memory,
/// but 1.5-2.5× its time, from page faults.
/// <para>Set: M_MMAP_THRESHOLD = 128 KB, fixed. glibc's default starts there but raises the threshold to the largest
/// freed mapping, so the multi-megabyte tensors of each pass land in the heap, where their holes fragment it: the
/// resident set grew by about 25 MB per GPT-2 eval pass, linearly and without bound (as it did with any fixed
/// threshold of 1 MB or more, with trimming off, and with the 512 MB M_TOP_PAD set here before, whose large top chunk
/// served them from the heap). Fixed at 128 KB (trimming at glibc's 128 KB too), a tensor of 128 KB or more that no
/// free heap chunk fits gets its own mapping, returned when freed: the resident set stays at the live size, like
/// jemalloc's, for page faults on each new tensor. Measured (bench/allocator.md, idle machine): peak resident
/// 0.93-0.99× jemalloc's (the old top pad: 2.15× on eval), time 1.5-2.5× jemalloc's.</para>
/// <para>GEOSHARE_ALLOCATOR=default skips the tuning (glibc's own defaults, for comparisons); so does a
/// MALLOC_MMAP_THRESHOLD_ set by the user.</para>
/// </summary>
public static partial class NativeAllocator
{
    /// <summary>"jemalloc" when preloaded, else "glibc" (with " defaults" when GEOSHARE_ALLOCATOR=default).</summary>
    public static string Name { get; } =
        File.Exists("/proc/self/maps") && File.ReadAllText("/proc/self/maps").Contains("libjemalloc") ? "jemalloc"
        : Environment.GetEnvironmentVariable("GEOSHARE_ALLOCATOR") == "default" ? "glibc defaults" : "glibc";

    /// <summary>Debian's libjemalloc2 (the README and .ci/run install it).</summary>
    public const string JemallocPath = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    /// <summary>Freed pages go back to the kernel after 5 s unused: with no decay the planner's many differently sized
    /// tensors grew the resident set to 19 GB on LLaMA.</summary>
    public const string JemallocConf = "dirty_decay_ms:5000,muzzy_decay_ms:0";
    private const string ReexecMarker = "GEOSHARE_ALLOCATOR_EXEC";

    /// <summary>
    /// For a program's entry point (the `geoshare` command): runs this process again, the same command line, with
    /// jemalloc preloaded, when it is installed and not yet loaded. jemalloc keeps freed extents for reuse, which no
    /// mallopt setting of glibc does: a float64 analyze of two GPT-2 blocks took 2.4× the time under glibc
    /// (bench/allocator.md). Returns (doing nothing) when jemalloc is absent, already loaded, GEOSHARE_ALLOCATOR is
    /// set, or the exec fails. Library code cannot switch allocators after start; there the glibc tuning applies.
    /// </summary>
    public static void PreferJemalloc()
    {
        if (!OperatingSystem.IsLinux() || Name != "glibc" || !File.Exists(JemallocPath)) return;
        if (Environment.GetEnvironmentVariable("GEOSHARE_ALLOCATOR") is not null || Environment.GetEnvironmentVariable(ReexecMarker) is not null) return;
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable("LD_PRELOAD"))) return;
        string[] argv;
        try { argv = File.ReadAllText("/proc/self/cmdline").TrimEnd('\0').Split('\0'); }
        catch (IOException) { return; }
        if (argv.Length == 0) return;
        var env = Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .ToDictionary(e => (string)e.Key, e => (string?)e.Value ?? "");
        env["LD_PRELOAD"] = JemallocPath;
        if (!env.ContainsKey("MALLOC_CONF")) env["MALLOC_CONF"] = JemallocConf;
        env[ReexecMarker] = "1";
        try
        {
            Console.Out.Flush();
            Console.Error.Flush();
            ExecVe("/proc/self/exe", NullTerminated(argv), NullTerminated(env.Select(kv => $"{kv.Key}={kv.Value}")));
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        // execve returns only on failure: go on under glibc.
    }

    /// <summary>UTF-8 C strings and a terminating null pointer; never freed (execve replaces the process or we exit the path).</summary>
    private static IntPtr[] NullTerminated(IEnumerable<string> items) => [.. items.Select(Marshal.StringToCoTaskMemUTF8), IntPtr.Zero];

    [LibraryImport("libc", EntryPoint = "execve", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int ExecVe(string path, IntPtr[] argv, IntPtr[] envp);

    private const int M_MMAP_THRESHOLD = -3;
    private const int MmapThresholdBytes = 128 << 10;

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int MallOpt(int param, int value);

    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255", Justification = "allocator policy must be set before the first tensor is allocated, in every host (CLI, tests, user code)")]
    internal static void Tune()
    {
        if (!OperatingSystem.IsLinux() || Name != "glibc" || Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null) return;
        try { MallOpt(M_MMAP_THRESHOLD, MmapThresholdBytes); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { /* not glibc: nothing to tune */ }
    }
}
