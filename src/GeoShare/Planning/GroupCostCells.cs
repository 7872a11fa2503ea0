using System.Security.Cryptography;
using System.Text;

namespace GeoShare.Planning;

/// <summary>One costed group as a file: what it was costed for (the fingerprint), and its rank options.</summary>
public sealed record GroupCostCell(string Fingerprint, string Type, int[] Layers, IReadOnlyList<RankOption> Options);

/// <summary>
/// A folder of exactly costed groups (`plan --cells DIR`), one file per group, written atomically (a temporary name,
/// renamed): shards on several machines fill it (`--shard i/n`), and a later run finishes from whatever cells exist.
/// A cell records the fingerprint of everything its cost depends on (model, calibration and curvature data, the
/// cost model's options); a cell of another fingerprint is an error naming the file, never a cost silently reused.
/// Costs are stored as JSON numbers, which read back to the same doubles.
/// </summary>
public sealed class GroupCostCells
{
    public string Dir { get; }
    public string Fingerprint { get; }
    private int _read, _written;
    public int Read => _read;
    public int Written => _written;

    public GroupCostCells(string dir, string fingerprint)
    {
        Dir = dir;
        Fingerprint = fingerprint;
        Directory.CreateDirectory(dir);
    }

    /// <summary>SHA-256 of the parts, each on its own line.</summary>
    public static string FingerprintOf(IEnumerable<string> parts) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join("\n", parts))));

    private static string Short(string fingerprint) => fingerprint.Length > 12 ? fingerprint[..12] + "…" : fingerprint;

    public string PathOf(string type, int[] layers) => Path.Combine(Dir, $"{type}@{string.Join("-", layers)}.json");

    public GroupCandidate? TryRead(string type, int[] layers, IReadOnlyList<int> ranks)
    {
        string path = PathOf(type, layers);
        if (!File.Exists(path)) return null;
        var cell = JsonOutput.Read<GroupCostCell>(path);
        if (cell.Fingerprint != Fingerprint)
            throw BadInputException.For(path, $"was costed for another model, data or cost-model options (fingerprint {Short(cell.Fingerprint)}, this run {Short(Fingerprint)})");
        if (cell.Type != type || !cell.Layers.SequenceEqual(layers) || !cell.Options.Select(o => o.Rank).SequenceEqual(ranks))
            throw BadInputException.For(path, $"holds {cell.Type} layers {string.Join("+", cell.Layers)} ranks {string.Join(",", cell.Options.Select(o => o.Rank))}, expected {type} layers {string.Join("+", layers)} ranks {string.Join(",", ranks)} (another --ratio?)");
        Interlocked.Increment(ref _read);
        return new GroupCandidate(type, layers, cell.Options);
    }

    public void Write(GroupCandidate c)
    {
        JsonOutput.Write(PathOf(c.Type, c.Layers), new GroupCostCell(Fingerprint, c.Type, c.Layers, c.Options));
        Interlocked.Increment(ref _written);
    }
}
