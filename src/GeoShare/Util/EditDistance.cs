namespace GeoShare;

public static class EditDistance
{
    /// <summary>Levenshtein distance, for "did you mean" suggestions.</summary>
    public static int Between(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }

    public static IEnumerable<string> Closest(IEnumerable<string> candidates, string name, int count) =>
        candidates.OrderBy(c => Between(c, name)).ThenBy(c => c, StringComparer.Ordinal).Take(count);
}
