using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

public sealed record BaselineOptions
{
    /// <summary>Layers per group for adjacent, similarity and random.</summary>
    public int GroupSize { get; init; } = 2;
    /// <summary>Unique blocks M for sequence, cycle and cycle-rev (Takase and Kiyono); default: layers / 3.</summary>
    public int? UniqueBlocks { get; init; }
    /// <summary>Types whose layers share; the others are compressed per layer.</summary>
    public IReadOnlyList<string>? SharedTypes { get; init; }
    public SharingMode Mode { get; init; } = SharingMode.Basis;
    public long Seed { get; init; }
}

/// <summary>
/// The sharing rules Geo-Sharing must beat, each as a plan at an exact parameter budget: every group keeps
/// the fraction 1 − ratio of its parameters (rank from Basis Sharing's formula), so all methods store the same
/// number of parameters up to one rank step per group.
/// </summary>
public static class Baselines
{
    public static readonly string[] Methods = ["none", "svd", "adjacent", "all", "sequence", "cycle", "cycle-rev", "sandwich", "similarity", "random"];

    public static SharingPlan Create(string method, PretrainedModel model, double ratio, BaselineOptions options, ActivationGrams? grams = null)
    {
        if (!Methods.Contains(method)) throw new UsageException("method", $"unknown method '{method}' (methods: {string.Join(", ", Methods)}, geo)");
        if (method != "none" && !(ratio > 0 && ratio < 1)) throw new UsageException("ratio", $"must be within (0, 1), got {ratio}");
        int layers = model.Config.NumLayers;
        // Refused, never clamped: a group size or block count the model cannot have is the user's mistake.
        if (method is "adjacent" or "similarity" or "random" && (options.GroupSize < 1 || options.GroupSize > layers))
            throw new UsageException("group_size", $"must be within 1..{layers} (the model has {layers} layers), got {options.GroupSize}");
        if (method is "sequence" or "cycle" or "cycle-rev" && options.UniqueBlocks is int unique && (unique < 1 || unique > layers))
            throw new UsageException("unique_blocks", $"must be within 1..{layers} (the model has {layers} layers), got {unique}");
        var shared = options.SharedTypes ?? ShareableTypes.Default(model);
        var types = new Dictionary<string, TypePlan>();
        foreach (var type in model.ProjectionTypes)
        {
            if (method == "none") { types[type] = new TypePlan { Mode = SharingMode.Dense }; continue; }
            int[] coloring = method == "svd" || !shared.Contains(type)
                ? Enumerable.Range(0, layers).ToArray()
                : Coloring(method, model, type, options, grams);
            var mode = coloring.Distinct().Count() == layers ? SharingMode.Basis : options.Mode;
            types[type] = WithRanks(model, type, SharingPlan.Canonical(coloring), mode, ratio);
        }
        return SharingPlan.ForModel(model, method, method == "none" ? 0 : ratio, types);
    }

    /// <summary>A type's plan with every color's rank set to keep 1 − ratio of its parameters.</summary>
    public static TypePlan WithRanks(PretrainedModel model, string type, int[] coloring, SharingMode mode, double ratio)
    {
        var site = model.Site(type, 0);
        var plan = new TypePlan { Mode = mode, Coloring = coloring };
        if (mode != SharingMode.Basis) return plan;
        return plan with { Ranks = plan.Groups().Select(g => SharedBasis.RankForKeptFraction(site.InFeatures, site.OutFeatures, g.Length, 1 - ratio)).ToArray() };
    }

    public static int[] Coloring(string method, PretrainedModel model, string type, BaselineOptions o, ActivationGrams? grams)
    {
        int n = model.Config.NumLayers;
        int size = Math.Max(1, o.GroupSize);
        int m = Math.Clamp(o.UniqueBlocks ?? Math.Max(1, n / 3), 1, n);
        return method switch
        {
            "adjacent" => Enumerable.Range(0, n).Select(l => l / size).ToArray(),
            "all" => new int[n],
            // Takase and Kiyono: M unique blocks over N layers.
            "sequence" => Enumerable.Range(0, n).Select(l => l * m / n).ToArray(),       // AABBCC
            "cycle" => Enumerable.Range(0, n).Select(l => l % m).ToArray(),             // ABCABC
            "cycle-rev" => Enumerable.Range(0, n).Select(l => (l / m) % 2 == 0 ? l % m : m - 1 - l % m).ToArray(), // ABCCBA(ABC…)
            // Subformer's sandwich: first and last layers keep their own weights, the middle shares one.
            "sandwich" => Enumerable.Range(0, n).Select(l => l == 0 ? 0 : l == n - 1 ? 2 : 1).ToArray(),
            "similarity" => SimilarityGroups(model, type, size, grams ?? throw new ArgumentException("similarity grouping needs calibration statistics")),
            "random" => RandomGroups(n, size, o.Seed),
            _ => throw new UsageException($"unknown method '{method}'"),
        };
    }

    /// <summary>Random partition into groups of the given size (the last may be smaller), seeded.</summary>
    public static int[] RandomGroups(int n, int size, long seed)
    {
        var rng = new Random((int)seed);
        var order = Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray();
        var coloring = new int[n];
        for (int i = 0; i < n; i++) coloring[order[i]] = i / size;
        return coloring;
    }

    /// <summary>
    /// SharVeT-like grouping by similarity of the whitened weights: greedily merge the two most similar
    /// groups (average cosine similarity of S·W) while groups are smaller than <paramref name="size"/>.
    /// </summary>
    public static int[] SimilarityGroups(PretrainedModel model, string type, int size, ActivationGrams grams)
    {
        int n = model.Config.NumLayers;
        var sim = new double[n, n];
        using (torch.no_grad())
        using (var scope = torch.NewDisposeScope())
        {
            var whitened = Enumerable.Range(0, n).Select(l =>
            {
                var site = model.Site(type, l);
                var s = SharedBasis.WhiteningFactor(grams[site.Name]);
                var w = s.matmul(model.GetProjection(site).WeightInOut().to_type(ScalarType.Float64)).reshape(-1);
                return w.div(w.norm());
            }).ToArray();
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    sim[i, j] = whitened[i].dot(whitened[j]).item<double>();
        }
        var groups = Enumerable.Range(0, n).Select(l => new List<int> { l }).ToList();
        while (true)
        {
            double best = double.NegativeInfinity;
            (int A, int B) pick = (-1, -1);
            for (int a = 0; a < groups.Count; a++)
                for (int b = a + 1; b < groups.Count; b++)
                {
                    if (groups[a].Count + groups[b].Count > size) continue;
                    double s = groups[a].SelectMany(i => groups[b].Select(j => sim[i, j])).Average();
                    if (s > best) { best = s; pick = (a, b); }
                }
            if (pick.A < 0) break;
            groups[pick.A].AddRange(groups[pick.B]);
            groups.RemoveAt(pick.B);
        }
        var coloring = new int[n];
        for (int g = 0; g < groups.Count; g++) foreach (int l in groups[g]) coloring[l] = g;
        return coloring;
    }
}
