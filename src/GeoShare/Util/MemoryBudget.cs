namespace GeoShare;

/// <summary>
/// Memory this process may still use: the smaller of the kernel's MemAvailable and what its memory cgroup allows beyond
/// its current usage (cgroup v1 memory.limit_in_bytes − memory.usage_in_bytes, or v2 memory.max − memory.current).
/// </summary>
public static class MemoryBudget
{
    public static long AvailableBytes()
    {
        long available = MemInfo("MemAvailable:") ?? long.MaxValue;
        if (CgroupRoom() is long room) available = Math.Min(available, room);
        return available;
    }

    private static long? MemInfo(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith(key, StringComparison.Ordinal))
                    return long.Parse(line[key.Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    private static long? CgroupRoom()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/cgroup"))
            {
                var parts = line.Split(':', 3);
                if (parts.Length != 3) continue;
                if (parts[1].Split(',').Contains("memory"))
                    return Room(Path.Combine("/sys/fs/cgroup/memory" + parts[2]), "memory.limit_in_bytes", "memory.usage_in_bytes");
                if (parts[0] == "0" && parts[1] == "" && Room("/sys/fs/cgroup" + parts[2], "memory.max", "memory.current") is long v2) return v2;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    private static long? Room(string dir, string limitFile, string usageFile)
    {
        string limit = Path.Combine(dir, limitFile), usage = Path.Combine(dir, usageFile);
        if (!File.Exists(limit) || !File.Exists(usage)) return null;
        string l = File.ReadAllText(limit).Trim();
        if (l == "max" || !long.TryParse(l, out long bytes) || bytes >= long.MaxValue / 2) return null;
        return long.TryParse(File.ReadAllText(usage).Trim(), out long used) ? Math.Max(0, bytes - used) : null;
    }
}
