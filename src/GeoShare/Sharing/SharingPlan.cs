using System.Text.Json;
using System.Text.Json.Serialization;
using GeoShare.Curvature;
using GeoShare.Models;

namespace GeoShare.Sharing;

/// <summary>How the matrices of one type are stored after compression.</summary>
public enum SharingMode
{
    /// <summary>Left as they are.</summary>
    Dense,
    /// <summary>Basis Sharing: per color a shared low-rank basis, per layer its coefficients (a color of one layer is SVD-LLM).</summary>
    Basis,
    /// <summary>Per color one matrix, used by every layer of the color.</summary>
    Tie,
}

/// <summary>
/// The plan for one matrix type: a coloring of the layers (layers of one color share) in canonical form,
/// the mode, and for <see cref="SharingMode.Basis"/> the rank of each color's basis.
/// </summary>
public sealed record TypePlan
{
    public required SharingMode Mode { get; init; }
    public int[] Coloring { get; init; } = [];
    public int[]? Ranks { get; init; }
    /// <summary>Predicted loss increase per color, where the planner computed one.</summary>
    public double[]? PredictedLoss { get; init; }

    [JsonIgnore] public int Colors => Coloring.Length == 0 ? 0 : Coloring.Max() + 1;

    /// <summary>Layers of each color, in layer order.</summary>
    public IReadOnlyList<int[]> Groups() =>
        Enumerable.Range(0, Colors).Select(c => Enumerable.Range(0, Coloring.Length).Where(l => Coloring[l] == c).ToArray()).ToList();
}

/// <summary>
/// What a plan's per-layer coefficients need beyond its coloring and ranks: Geo-Sharing's are curvature-aligned, so
/// compressing by the plan collects the block curvature again with these settings, on the same model type,
/// calibration and curvature batch. A plan without one gets Basis Sharing's coefficients (the SVD's, or the refit's).
/// </summary>
public sealed record CoefficientRecipe
{
    public const string CurvatureAligned = "curvature-aligned";

    public string Method { get; init; } = CurvatureAligned;
    public required CurvatureMethod Curvature { get; init; }
    public required int TopK { get; init; }
    public required double Tolerance { get; init; }
    public required int TraceProducts { get; init; }
    public required int KfacSamples { get; init; }
    public required double Trust { get; init; }
    public required bool UseGradient { get; init; }
    public required long Seed { get; init; }
    /// <summary>Which windows (images) of which file the curvature was taken on, as the batch describes itself.</summary>
    public required string CurvatureBatch { get; init; }
    /// <summary>Element type of the model the curvature was computed on (float32, float64).</summary>
    public required string ModelDtype { get; init; }
}

/// <summary>A sharing configuration for a whole model: per matrix type a <see cref="TypePlan"/>. Saved as JSON.</summary>
public sealed record SharingPlan
{
    public const string FormatTag = "geoshare-plan/1";

    public string Format { get; init; } = FormatTag;
    public required string ModelType { get; init; }
    public required int NumLayers { get; init; }
    public string Method { get; init; } = "custom";
    public double? Ratio { get; init; }
    /// <summary>In/out features of each type, so that a plan is checked against a model before use.</summary>
    public required Dictionary<string, int[]> Shapes { get; init; }
    public required Dictionary<string, TypePlan> Types { get; init; }
    /// <summary>What the coefficients need (Geo-Sharing's plans); null: Basis Sharing's coefficients.</summary>
    public CoefficientRecipe? Coefficients { get; init; }

    /// <summary>Group-size histogram: how many colors of each size (layers sharing) the compressed types have, by size.</summary>
    public SortedDictionary<int, int> GroupSizes()
    {
        var counts = new SortedDictionary<int, int>();
        foreach (var tp in Types.Values.Where(t => t.Mode != SharingMode.Dense))
            foreach (var g in tp.Groups()) counts[g.Length] = counts.GetValueOrDefault(g.Length) + 1;
        return counts;
    }

    /// <summary>"12 × 1, 18 × 2" (groups × layers per group), for a report line.</summary>
    public static string DescribeGroupSizes(IReadOnlyDictionary<int, int> sizes) =>
        string.Join(", ", sizes.OrderBy(kv => kv.Key).Select(kv => $"{kv.Value} × {kv.Key}"));

    public static bool IsCanonical(IReadOnlyList<int> coloring)
    {
        int next = 0;
        foreach (int c in coloring)
        {
            if (c < 0 || c > next) return false;
            if (c == next) next++;
        }
        return true;
    }

    /// <summary>Relabels colors in order of first appearance (restricted growth string).</summary>
    public static int[] Canonical(IReadOnlyList<int> coloring)
    {
        var map = new Dictionary<int, int>();
        return coloring.Select(c => map.TryGetValue(c, out int m) ? m : map[c] = map.Count).ToArray();
    }

    /// <summary>Largest rank a basis of this group can have: min(in, layers · out).</summary>
    public static int FullRank(int inFeatures, int outFeatures, int layers) => Math.Min(inFeatures, layers * outFeatures);

    /// <summary>Checks the plan against a model; every problem is reported with <paramref name="source"/>.</summary>
    public void Validate(PretrainedModel model, string source)
    {
        void Fail(string problem) => throw BadInputException.For(source, problem);
        // JSON null deserializes into any field: every one is checked before use.
        if (Format != FormatTag) Fail($"unknown plan format '{BoundedFile.Quote(Format ?? "null", 40)}' (expected {FormatTag})");
        if (ModelType != model.Config.ModelType) Fail($"plan is for model_type '{BoundedFile.Quote(ModelType ?? "null", 40)}', the model is '{model.Config.ModelType}'");
        if (Types is null || Types.Count == 0) Fail("no 'types' (the plan of each matrix type)");
        if (Shapes is null) Fail("no 'shapes' (in/out features of each matrix type)");
        if (Ratio is double r && !(r >= 0 && r < 1)) Fail($"ratio {r} is outside [0, 1)");
        if (NumLayers != model.Config.NumLayers) Fail($"plan has {NumLayers} layers, the model has {model.Config.NumLayers}");
        if (Coefficients is { } recipe && recipe.Method != CoefficientRecipe.CurvatureAligned)
            Fail($"unknown coefficients '{recipe.Method}' (expected {CoefficientRecipe.CurvatureAligned}, or none for Basis Sharing's)");
        foreach (var (type, plan) in Types!)
        {
            if (!model.ProjectionTypes.Contains(type))
                Fail($"unknown matrix type '{BoundedFile.Quote(type, 40)}' (this model has: {string.Join(", ", model.ProjectionTypes)})");
            if (plan is null) Fail($"type '{type}': null plan");
            if (!Enum.IsDefined(plan!.Mode)) Fail($"type '{type}': unknown mode {(int)plan.Mode}");
            if (plan.Mode != SharingMode.Dense && plan.Coloring is null) Fail($"type '{type}': no coloring");
            var site = model.Site(type, 0);
            if (!Shapes!.TryGetValue(type, out var shape) || shape is null || shape.Length != 2)
                Fail($"no shape for type '{type}'");
            if (shape![0] != site.InFeatures || shape[1] != site.OutFeatures)
                Fail($"type '{type}' is {shape[0]}×{shape[1]} in the plan, {site.InFeatures}×{site.OutFeatures} in the model");
            if (plan.Mode == SharingMode.Dense) continue;
            if (plan.Coloring.Length != NumLayers) Fail($"type '{type}': coloring has {plan.Coloring.Length} entries for {NumLayers} layers");
            if (!IsCanonical(plan.Coloring))
                Fail($"type '{type}': coloring [{string.Join(",", plan.Coloring)}] is not canonical (first layer 0, each new color the next integer; canonical: [{string.Join(",", Canonical(plan.Coloring))}])");
            if (plan.Mode == SharingMode.Basis)
            {
                if (plan.Ranks is null || plan.Ranks.Length != plan.Colors)
                    Fail($"type '{type}': {plan.Colors} colors need {plan.Colors} ranks, got {plan.Ranks?.Length ?? 0}");
                var groups = plan.Groups();
                for (int c = 0; c < plan.Colors; c++)
                {
                    int full = FullRank(site.InFeatures, site.OutFeatures, groups[c].Length);
                    if (plan.Ranks![c] < 1 || plan.Ranks[c] > full)
                        Fail($"type '{type}': rank {plan.Ranks[c]} of color {c} is outside 1..{full}");
                }
            }
        }
    }

    public static SharingPlan ForModel(PretrainedModel model, string method, double? ratio, Dictionary<string, TypePlan> types) => new()
    {
        ModelType = model.Config.ModelType,
        NumLayers = model.Config.NumLayers,
        Method = method,
        Ratio = ratio,
        Shapes = model.ProjectionTypes.ToDictionary(t => t, t => new[] { model.Site(t, 0).InFeatures, model.Site(t, 0).OutFeatures }),
        Types = types,
    };

    public string ToJson() => JsonOutput.Serialize(this);

    public void Save(string path) => AtomicFile.WriteText(path, ToJson() + "\n");

    public static SharingPlan Load(string path)
    {
        if (!File.Exists(path)) throw BadInputException.For(path, "plan file not found");
        try
        {
            return JsonSerializer.Deserialize<SharingPlan>(BoundedFile.ReadAllText(path, BoundedFile.JsonLimit, "plan file"), JsonOutput.Options)
                   ?? throw BadInputException.For(path, "empty plan");
        }
        catch (JsonException e)
        {
            throw BadInputException.For(path, $"not a valid plan ({BoundedFile.JsonProblem(e)})");
        }
    }
}
