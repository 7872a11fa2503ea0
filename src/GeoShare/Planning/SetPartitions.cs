namespace GeoShare.Planning;

/// <summary>
/// Set partitions of n layers as colorings in canonical form (restricted growth strings: the first layer
/// has color 0, each new color is the next integer), so that every partition appears exactly once:
/// Bell(n) of them.
/// </summary>
public static class SetPartitions
{
    public static IEnumerable<int[]> Enumerate(int n, int maxGroupSize = int.MaxValue, Func<int[], int, int, bool>? allowed = null)
    {
        if (n == 0) { yield return []; yield break; }
        var coloring = new int[n];
        var sizes = new int[n + 1];
        foreach (var c in Extend(coloring, sizes, 0, 0, maxGroupSize, allowed)) yield return c;
    }

    private static IEnumerable<int[]> Extend(int[] coloring, int[] sizes, int position, int colors, int maxSize, Func<int[], int, int, bool>? allowed)
    {
        if (position == coloring.Length) { yield return (int[])coloring.Clone(); yield break; }
        for (int c = 0; c <= colors; c++)
        {
            if (sizes[c] >= maxSize) continue;
            if (allowed is not null && !allowed(coloring, position, c)) continue;
            coloring[position] = c;
            sizes[c]++;
            foreach (var x in Extend(coloring, sizes, position + 1, Math.Max(colors, c + 1), maxSize, allowed)) yield return x;
            sizes[c]--;
        }
    }

    public static long Bell(int n)
    {
        var row = new long[] { 1 };
        for (int i = 1; i <= n; i++)
        {
            var next = new long[i + 1];
            next[0] = row[^1];
            for (int j = 1; j <= i; j++) next[j] = next[j - 1] + row[j - 1];
            row = next;
        }
        return row[0];
    }

    /// <summary>The groups (layer lists) of a coloring.</summary>
    public static int[][] Groups(IReadOnlyList<int> coloring) =>
        Enumerable.Range(0, coloring.Count == 0 ? 0 : coloring.Max() + 1)
            .Select(c => Enumerable.Range(0, coloring.Count).Where(l => coloring[l] == c).ToArray()).ToArray();

    /// <summary>Every subset of 0..n-1 (as sorted layer lists) that may form a group under the constraints.</summary>
    public static IEnumerable<int[]> Candidates(int n, int maxGroupSize, bool contiguous, IReadOnlySet<int> privateLayers)
    {
        var current = new List<int>();
        IEnumerable<int[]> From(int start)
        {
            for (int l = start; l < n; l++)
            {
                if (current.Count > 0 && (privateLayers.Contains(l) || privateLayers.Contains(current[0]))) continue;
                if (contiguous && current.Count > 0 && l != current[^1] + 1) continue;
                current.Add(l);
                yield return current.ToArray();
                if (current.Count < maxGroupSize)
                    foreach (var c in From(l + 1)) yield return c;
                current.RemoveAt(current.Count - 1);
            }
        }
        return From(0).ToList();
    }
}
