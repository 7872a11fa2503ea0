using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace GeoShare;

/// <summary>
/// The native allocator under libtorch, chosen when the library loads (a module initializer, so the CLI, the tests
/// and a user's program all get it; no LD_PRELOAD):
/// <list type="bullet">
/// <item>"caching" (the default): the library's own CPU allocator (native/geoshare_alloc.cpp, built with the library
/// and copied next to it) installed into libtorch with c10::SetCPUAllocator. Tensors of 128 KB or more are anonymous
/// mappings kept for reuse after they are freed, in size classes, instead of returned to the kernel and faulted in
/// again; bounded: the mapped total never exceeds the peak in use plus 1/8 of it, 256 MB at least (the oldest cached
/// blocks are given up first: the largest of those a request needs given up is resized for it with mremap, its pages
/// kept, the others unmapped), and a block unused for 5 s is unmapped. Smaller tensors come from glibc, tuned as below.</item>
/// <item>"jemalloc": jemalloc is preloaded (by the user, or by the `geoshare` command re-executing itself under it
/// when GEOSHARE_ALLOCATOR=jemalloc, <see cref="PreferJemalloc"/>; the caching allocator is faster, bench/allocator.md);
/// nothing is installed, jemalloc already keeps freed extents.</item>
/// <item>"glibc" (GEOSHARE_ALLOCATOR=glibc, or when the caching allocator cannot be installed): libtorch's own CPU
/// allocator on glibc with M_MMAP_THRESHOLD fixed at 128 KB: jemalloc's peak memory at 1.5-2.5× its time, from page
/// faults (bench/allocator.md).</item>
/// <item>"glibc defaults" (GEOSHARE_ALLOCATOR=default): nothing set, for comparisons.</item>
/// </list>
/// <para>The glibc tuning (every host but "glibc defaults" and jemalloc): M_MMAP_THRESHOLD = 128 KB, fixed. glibc's
/// default starts there but raises the threshold to the largest freed mapping, so the multi-megabyte blocks of each
/// pass land in the heap, where their holes fragment it: the resident set grew by about 25 MB per GPT-2 eval pass,
/// without bound (as with any fixed threshold of 1 MB or more, with trimming off, and with the 512 MB M_TOP_PAD set
/// here before). Fixed at 128 KB, a block of 128 KB or more gets its own mapping, returned when freed. A
/// MALLOC_MMAP_THRESHOLD_ set by the user skips it.</para>
/// </summary>
public static partial class NativeAllocator
{
    /// <summary>"caching", "jemalloc", "glibc" or "glibc defaults" (see the class summary; "default" off Linux).</summary>
    public static string Name { get; private set; } = "glibc";

    /// <summary>Why the caching allocator is not in use: null when it is; else what happened.</summary>
    public static string? CachingUnavailable { get; private set; } = "not tried";

    /// <summary>The file name of the library's CPU allocator, next to GeoShare.dll.</summary>
    public const string CachingLibraryName = "libgeoshare_alloc.so";

    /// <summary>Debian's libjemalloc2 (the README and .ci/run install it).</summary>
    public const string JemallocPath = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    /// <summary>Freed pages go back to the kernel after 5 s unused: with no decay the planner's many differently sized
    /// tensors grew the resident set to 19 GB on LLaMA.</summary>
    public const string JemallocConf = "dirty_decay_ms:5000,muzzy_decay_ms:0";
    private const string ReexecMarker = "GEOSHARE_ALLOCATOR_EXEC";

    /// <summary>
    /// For a program's entry point (the `geoshare` command), on request (GEOSHARE_ALLOCATOR=jemalloc, for
    /// comparisons): runs this process again, the same command line, with jemalloc preloaded, when it is installed
    /// and not yet loaded. Returns (doing nothing) otherwise, or when the exec fails; the process then goes on with
    /// the allocator chosen when the library loaded (the caching allocator, which measured faster than jemalloc).
    /// </summary>
    public static void PreferJemalloc()
    {
        if (!OperatingSystem.IsLinux() || Name == "jemalloc") return;
        if (Environment.GetEnvironmentVariable("GEOSHARE_ALLOCATOR") != "jemalloc" || Environment.GetEnvironmentVariable(ReexecMarker) is not null) return;
        if (!File.Exists(JemallocPath))
        {
            Console.Error.WriteLine($"geoshare: warning: GEOSHARE_ALLOCATOR=jemalloc: {JemallocPath} is not installed (apt-get install libjemalloc2); using {Name}");
            return;
        }
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
        // execve returns only on failure: go on with the allocator chosen at load.
    }

    /// <summary>UTF-8 C strings and a terminating null pointer; never freed (execve replaces the process or we exit the path).</summary>
    private static IntPtr[] NullTerminated(IEnumerable<string> items) => [.. items.Select(Marshal.StringToCoTaskMemUTF8), IntPtr.Zero];

    [LibraryImport("libc", EntryPoint = "execve", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int ExecVe(string path, IntPtr[] argv, IntPtr[] envp);


    private const int M_MMAP_THRESHOLD = -3;
    private const int MmapThresholdBytes = 128 << 10;

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int MallOpt(int param, int value);

    /// <summary>SetCPUAllocator's priority: above the 0 of libtorch's static registrations, so none that runs later
    /// (a library loaded after this one) replaces it; a user's allocator set with a higher priority wins.</summary>
    private const int InstallPriority = 1;

    private static IntPtr _caching;

    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255", Justification = "allocator policy must be set before the first tensor is allocated, in every host (CLI, tests, user code)")]
    internal static void Tune()
    {
        bool jemalloc = File.Exists("/proc/self/maps") && File.ReadAllText("/proc/self/maps").Contains("libjemalloc");
        string? choice = Environment.GetEnvironmentVariable("GEOSHARE_ALLOCATOR");
        // A module initializer cannot fail the program: an unknown value is named on stderr and the default taken.
        if (choice is not null && choice is not ("caching" or "glibc" or "default" or "jemalloc"))
            Console.Error.WriteLine($"geoshare: warning: GEOSHARE_ALLOCATOR: unknown value '{choice}' (caching, glibc, default or jemalloc); using caching");
        if (!OperatingSystem.IsLinux()) { Name = "default"; CachingUnavailable = "not Linux"; return; }
        if (jemalloc) { Name = "jemalloc"; CachingUnavailable = "jemalloc is preloaded"; return; }
        if (choice == "default") { Name = "glibc defaults"; CachingUnavailable = "GEOSHARE_ALLOCATOR=default"; return; }
        if (Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is null)
        {
            try { MallOpt(M_MMAP_THRESHOLD, MmapThresholdBytes); }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { /* not glibc: nothing to tune */ }
        }
        Name = "glibc";
        if (choice == "glibc") { CachingUnavailable = "GEOSHARE_ALLOCATOR=glibc"; return; }
        CachingUnavailable = InstallCaching();
        if (CachingUnavailable is null) Name = "caching";
    }

    /// <summary>Loads libgeoshare_alloc.so and installs it as libtorch's CPU allocator (loading libc10.so, the one
    /// TorchSharp loads later, if it is not loaded yet). Null on success, else the reason.</summary>
    private static unsafe string? InstallCaching()
    {
        string[] dirs = [.. new[] { Path.GetDirectoryName(typeof(NativeAllocator).Assembly.Location), AppContext.BaseDirectory }
            .Where(d => !string.IsNullOrEmpty(d)).Select(d => d!).Distinct()];
        string? lib = dirs.Select(d => Path.Combine(d, CachingLibraryName)).FirstOrDefault(File.Exists);
        if (lib is null) return $"{CachingLibraryName} not found next to GeoShare.dll";
        if (!NativeLibrary.TryLoad(lib, out IntPtr handle)) return $"{lib} does not load";
        if (!NativeLibrary.TryGetExport(handle, "geoshare_alloc_install", out IntPtr install)) return $"{lib} has no geoshare_alloc_install";
        // libc10.so from the folders TorchSharp loads its natives from (flat in a RID-specific output, else runtimes/).
        string? c10 = dirs.SelectMany(d => new[] { Path.Combine(d, "libc10.so"), Path.Combine(d, "runtimes", "linux-x64", "native", "libc10.so") })
            .FirstOrDefault(File.Exists);
        if (c10 is null && NativeLibrary.TryLoad("libc10.so", typeof(TorchSharp.torch).Assembly, null, out _)) c10 = "libc10.so";
        IntPtr path = c10 is null ? IntPtr.Zero : Marshal.StringToCoTaskMemUTF8(c10);
        int code;
        try { code = ((delegate* unmanaged<IntPtr, int, int>)install)(path, InstallPriority); }
        finally { Marshal.FreeCoTaskMem(path); }
        if (code != 0)
            return code switch
            {
                1 => "libc10.so not found",
                2 => "libc10.so lacks c10::SetCPUAllocator",
                3 => "libc10's CPU allocator does not match the declarations of libtorch 2.10",
                4 => "libtorch kept an allocator of higher priority",
                _ => $"install returned {code}",
            };
        _caching = handle;
        return null;
    }

    /// <summary>Process-wide figures of the caching allocator (all zero when it is not in use). <c>Remaps</c>: cached blocks
    /// given up for a request of another size class and resized for it (mremap) instead of unmapped.</summary>
    public readonly record struct CachingStats(ulong Allocations, ulong LargeAllocations, ulong CacheHits, ulong Frees,
        ulong Mappings, ulong Unmappings, ulong LargeBytesInUse, ulong CachedBytes, ulong PeakLargeBytesInUse, ulong Remaps);

    /// <summary>The calling thread's figures of the caching allocator: its allocations, frees and cache hits, and the
    /// data pointer and size of its last allocation, and its allocations served by resizing a cached block (mremap).</summary>
    public readonly record struct ThreadCachingStats(ulong Allocations, ulong Frees, ulong CacheHits, ulong LastData, ulong LastBytes, ulong Remaps);

    public static unsafe CachingStats Stats()
    {
        var v = new ulong[10];
        if (Export("geoshare_alloc_stats") is { } f) fixed (ulong* p = v) ((delegate* unmanaged<ulong*, int, int>)f)(p, v.Length);
        return new(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]);
    }

    public static unsafe ThreadCachingStats ThreadStats()
    {
        var v = new ulong[6];
        if (Export("geoshare_alloc_thread_stats") is { } f) fixed (ulong* p = v) ((delegate* unmanaged<ulong*, int, int>)f)(p, v.Length);
        return new(v[0], v[1], v[2], v[3], v[4], v[5]);
    }

    /// <summary>Unmaps every cached block now (blocks in use stay); returns the bytes released (0 when not in use).</summary>
    public static unsafe ulong ReleaseCache() =>
        Export("geoshare_alloc_release_cache") is { } f ? ((delegate* unmanaged<ulong>)f)() : 0;

    private static IntPtr? Export(string name) =>
        _caching != IntPtr.Zero && NativeLibrary.TryGetExport(_caching, name, out IntPtr f) ? f : null;
}
