using System.Diagnostics;

namespace GeoShare;

/// <summary>Paths compared as the file system sees them: absolute, without trailing separators, symlinks resolved.</summary>
public static class PathIdentity
{
    /// <summary>
    /// The canonical form of <paramref name="path"/>: every existing component with its symlinks resolved, the
    /// rest (not yet created) appended as given. A symlink loop is left unresolved (opening it fails later, by name).
    /// </summary>
    public static string Canonical(string path) => Canonical(path, 0);

    private static string Canonical(string path, int depth)
    {
        string full = Path.GetFullPath(path);
        string root = Path.GetPathRoot(full) ?? "/";
        string current = root;
        foreach (var part in full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            string next = Path.Combine(current, part);
            FileSystemInfo info = new FileInfo(next);
            if (info.LinkTarget is not null && depth < 32)
            {
                try
                {
                    var target = info.ResolveLinkTarget(returnFinalTarget: true);
                    if (target is not null) next = Canonical(target.FullName, depth + 1);
                }
                catch (IOException) { } // a loop: compare by the name given
            }
            current = next;
        }
        return Path.TrimEndingDirectorySeparator(current) is { Length: > 0 } t ? t : root;
    }

    /// <summary>Whether <paramref name="inner"/> is <paramref name="outer"/> or lies inside it (both canonical).</summary>
    public static bool IsWithin(string inner, string outer) =>
        inner == outer || inner.StartsWith(outer.EndsWith(Path.DirectorySeparatorChar) ? outer : outer + Path.DirectorySeparatorChar, StringComparison.Ordinal);
}

/// <summary>
/// Partial outputs (staging folders, temporary files) of this process, removed when it is interrupted. Writers run
/// each step under <see cref="Step"/>; an interrupt waits for the current step, then no further step starts and
/// everything registered is removed (<see cref="Interrupt"/>).
/// </summary>
public static class PartialOutputs
{
    private static readonly object Gate = new();
    private static readonly HashSet<string> Live = [];
    private static volatile bool _interrupted;

    public static bool Interrupted => _interrupted;

    /// <summary>Registers a path that is removed if the process is interrupted before <see cref="Forget"/>.</summary>
    public static void Register(string path)
    {
        lock (Gate)
        {
            ThrowIfInterrupted();
            Live.Add(path);
        }
    }

    public static void Forget(string path)
    {
        lock (Gate) Live.Remove(path);
    }

    /// <summary>Runs one write step; none starts after an interrupt.</summary>
    public static void Step(Action write)
    {
        lock (Gate)
        {
            ThrowIfInterrupted();
            write();
        }
    }

    private static void ThrowIfInterrupted()
    {
        if (_interrupted) throw new OperationCanceledException("interrupted");
    }

    /// <summary>Called on SIGINT/SIGTERM: waits for the current step, then removes every registered partial output.</summary>
    public static IReadOnlyList<string> Interrupt()
    {
        _interrupted = true;
        lock (Gate)
        {
            var removed = Live.ToList();
            foreach (var p in removed) Delete(p);
            Live.Clear();
            return removed;
        }
    }

    internal static void Delete(string path)
    {
        try
        {
            if (Directory.Exists(path) && new DirectoryInfo(path).LinkTarget is null) Directory.Delete(path, recursive: true);
            else if (File.Exists(path) || new FileInfo(path).LinkTarget is not null) File.Delete(path);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>The name of this process's staging folder (or temporary file) for <paramref name="target"/>.</summary>
    public static string StagingName(string target, string tag) => $"{target}.{tag}-{Environment.ProcessId}";

    /// <summary>
    /// Removes what earlier, killed processes left beside <paramref name="target"/>: its staging folders and old copies
    /// (TARGET.tmp-PID, TARGET.old-PID) and temporary files (.NAME.PID.tmp) whose process is gone.
    /// </summary>
    public static void RemoveStale(string target)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(target));
        string? dir = Path.GetDirectoryName(full);
        if (dir is null || !Directory.Exists(dir)) return;
        string name = Path.GetFileName(full);
        IEnumerable<string> entries;
        try { entries = Directory.EnumerateFileSystemEntries(dir).ToList(); }
        catch (IOException) { return; }
        catch (UnauthorizedAccessException) { return; }
        foreach (var entry in entries)
        {
            string n = Path.GetFileName(entry);
            int? pid = null;
            foreach (var tag in new[] { ".tmp-", ".old-" })
                if (n.StartsWith(name + tag, StringComparison.Ordinal) && int.TryParse(n[(name.Length + tag.Length)..], out int p)) pid = p;
            if (n.StartsWith("." + name + ".", StringComparison.Ordinal) && n.EndsWith(".tmp", StringComparison.Ordinal)
                && int.TryParse(n[(name.Length + 2)..^4], out int q)) pid = q;
            if (pid is int id && id != Environment.ProcessId && !IsRunning(id)) Delete(entry);
        }
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }
}

/// <summary>
/// An exclusive lock on an output (OUT.lock beside it, held with an OS file lock): a second writer of the same output
/// fails at once instead of racing the first. The lock file is removed on release; one left by a killed process is
/// free again (the OS lock dies with its process) and is reused.
/// </summary>
public sealed class OutputLock : IDisposable
{
    private readonly FileStream _stream;
    public string LockPath { get; }

    private OutputLock(FileStream stream, string path)
    {
        _stream = stream;
        LockPath = path;
    }

    /// <summary>Locks <paramref name="target"/>; the caller names the output in the error (e.g. "--out DIR").</summary>
    public static OutputLock Acquire(string target, string label)
    {
        string path = Path.TrimEndingDirectorySeparator(Path.GetFullPath(target)) + ".lock";
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            PartialOutputs.Register(path);
            return new OutputLock(stream, path);
        }
        catch (IOException)
        {
            throw new BadInputException($"{label} is being written by another geoshare process (it holds {path}); wait for it or choose another output");
        }
        catch (UnauthorizedAccessException)
        {
            throw new BadInputException($"{label}: cannot create the lock file {path} (permission denied)");
        }
    }

    public void Dispose()
    {
        PartialOutputs.Forget(LockPath);
        try { File.Delete(LockPath); } catch (IOException) { } // while still held, so no other writer is locking it
        _stream.Dispose();
    }
}
