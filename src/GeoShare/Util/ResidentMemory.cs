namespace GeoShare;

/// <summary>The process's resident set size (VmRSS) and its peak (VmHWM), from /proc/self/status (Linux).</summary>
public static class ResidentMemory
{
    public static long CurrentBytes => Read("VmRSS:");
    public static long PeakBytes => Read("VmHWM:");

    private static long Read(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(key))
                    return long.Parse(line[key.Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        return -1;
    }
}
