using System.Globalization;
using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>The Geo-Sharing planner's options, shared by `plan` and `compress --method geo`.</summary>
public static class PlannerCliOptions
{
    /// <summary>The library's defaults, shown as the options' defaults (so the two cannot drift apart).</summary>
    private static readonly PlannerOptions Defaults = new() { Ratio = 0.5 };

    private static string Text(double v) => v.ToString(CultureInfo.InvariantCulture);
    private static string Name<T>(T value) where T : struct, Enum => value.ToString().ToLowerInvariant();

    public static IReadOnlyList<OptionSpec> Specs =>
    [
        new("--curvature", "exact|kfac", "block curvature: Lanczos eigenpairs + Hutchinson trace on Hessian-vector products, or K-FAC factors", Name(Defaults.Curvature)),
        new("--curvature-windows", "N", "windows (images) of the curvature batch, from the first of the calibration data, stride --curvature-stride", DefaultNote: "4 windows (language models), 64 images (ViT)"),
        new("--curvature-stride", "S", "stride of the curvature batch", DefaultNote: "1 (language models), 16 (ViT)"),
        new("--top", "K", "top eigenpairs per block in the cost model", Text(Defaults.TopK)),
        new("--max-group", "N", "largest group of layers that may share (every group up to this size is costed: 12 layers give 78 groups at 2, 298 at 3, 793 at 4)", Text(Defaults.MaxGroupSize)),
        new("--contiguous", null, "only groups of consecutive layers"),
        new("--private", "LAYERS", "layers that never share (comma-separated indices)"),
        new("--search", "auto|exact|greedy", $"exact: CP-SAT over the costed groups, optimal (any depth); greedy: greedy merging + local search; auto: exact up to {GeoPlanner.ExactSearchMaxVariables:N0} group × rank choices, greedy beyond", Name(Defaults.Search)),
        new("--costing", "auto|full|screened", $"full: cost every allowed group exactly; screened: bound every group cheaply (one eigendecomposition of the narrower side, [in, in] or [n·out, n·out]) and cost exactly only each layer's best --screen-partners groups of each size; auto: full up to {GeoPlanner.FullCostingMaxWork:0e0} estimated multiply-adds (the bundled 12-layer models), screened beyond", Name(Defaults.Costing)),
        new("--screen-partners", "N", "screened costing: groups of each size each layer keeps for exact costing before the cost-then-verify loop (0: single layers only; the loop costs the groups the search chooses)", Text(Defaults.ScreenPartners)),
        new("--prescreen", "auto|off|N", $"screened costing: bound only each layer's N best partners by a sketched subspace affinity (the other pairs are left out); auto: {GeoPlanner.AutoPrescreenPartners} where bounding every pair would be beyond {GeoPlanner.PrescreenMinWork:0e0} estimated multiply-adds (deep or wide models: 32 × d1024, 16 × d2048), off below", "auto"),
        new("--cost-singles", "chosen|first", "screened costing: cost a single layer when the cost-then-verify search chooses it (its bounds stand in until then), or every single layer before the first search (the same plan; more groups costed)", "chosen"),
        new("--gradient", null, "include the first-order term ⟨g, δ⟩ of the calibration batch in the predicted loss (off: at a trained minimum it is noise)"),
        new("--trust", "TAU", "trust region: ‖δ‖ ≤ (1 + TAU)·‖δ of Basis Sharing‖ per layer", Text(Defaults.Trust)),
        new("--kept-offsets", "D,D,…|wide|first", "each group's rank options: kept fractions 1 − ratio + these offsets (above 0.98: 0.98; below 0.02: left out); wide: −0.4 … +0.3 by 0.1 and 0.98 (nine options, more costly); first: the planner's until 2026-12-07, ±0.1, ±0.2 (bench/ablation.md compares them)", string.Join(",", Defaults.KeptOffsets.Select(Text))),
    ];

    /// <summary>The planner's options that need no model, checked before it is loaded (<paramref name="layers"/> from config.json).</summary>
    public static void ValidateBeforeLoading(ParsedArgs a, int layers)
    {
        a.Choice("--curvature", "exact", "kfac");
        a.Choice("--search", "auto", "exact", "greedy");
        a.Choice("--costing", "auto", "full", "screened");
        a.Int("--screen-partners", min: 0);
        Prescreen(a);
        a.Choice("--cost-singles", "chosen", "first");
        a.Int("--top", min: 1);
        a.Int("--max-group", min: 1);
        a.Double("--trust", min: 0);
        KeptOffsets(a);
        if (a.Has("--curvature-windows")) a.Int("--curvature-windows", min: 1);
        if (a.Has("--curvature-stride")) a.Int("--curvature-stride", min: 1);
        PrivateLayers(a, layers);
    }

    private static double[] KeptOffsets(ParsedArgs a)
    {
        if (a.String("--kept-offsets") == "wide") return PlannerOptions.WideKeptOffsets;
        if (a.String("--kept-offsets") == "first") return PlannerOptions.FirstKeptOffsets;
        var offsets = a.DoubleList("--kept-offsets");
        if (offsets.Count == 0) throw new UsageException("--kept-offsets: empty list (leave it out for the default)");
        if (offsets.Any(d => d <= -1 || d > 1)) throw new UsageException($"--kept-offsets: every offset must be within (−1, 1], got {a.String("--kept-offsets")}");
        return offsets.ToArray();
    }

    /// <summary>--prescreen: null (auto), 0 (off) or a number of partners.</summary>
    private static int? Prescreen(ParsedArgs a) => a.String("--prescreen") switch
    {
        null or "auto" => null,
        "off" => 0,
        var v when int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int p) && p >= 1 => p,
        var v => throw new UsageException($"--prescreen: expected auto, off or a number of partners of at least 1, got '{BoundedFile.Quote(v)}'"),
    };

    private static HashSet<int> PrivateLayers(ParsedArgs a, int n) =>
        a.NonEmptyList("--private", "no private layers").Select(s => int.TryParse(s, out int l) && l >= 0 && l < n ? l
            : throw new UsageException($"--private: '{BoundedFile.Quote(s)}' is not a layer index in 0..{n - 1}")).ToHashSet();

    public static PlannerOptions Parse(ParsedArgs a, PretrainedModel model, double ratio)
    {
        int n = model.Config.NumLayers;
        var privateLayers = a.List("--private").Select(s => int.TryParse(s, out int l) && l >= 0 && l < n ? l
            : throw new UsageException($"--private: '{s}' is not a layer index in 0..{n - 1}")).ToHashSet();
        var options = new PlannerOptions
        {
            Ratio = ratio,
            Curvature = a.Choice("--curvature", "exact", "kfac") == "exact" ? CurvatureMethod.Exact : CurvatureMethod.Kfac,
            TopK = a.Int("--top", min: 1),
            MaxGroupSize = a.Int("--max-group", min: 1),
            Contiguous = a.Flag("--contiguous"),
            PrivateLayers = privateLayers,
            SharedTypes = ShareableTypes.Resolve(model, a.List("--share")),
            Search = a.Choice("--search", "auto", "exact", "greedy") switch { "exact" => SearchMethod.Exact, "greedy" => SearchMethod.Greedy, _ => SearchMethod.Auto },
            Trust = a.Double("--trust", min: 0),
            KeptOffsets = KeptOffsets(a),
            UseGradient = a.Flag("--gradient"),
            Seed = a.Int("--seed", min: 0),
            Costing = a.Choice("--costing", "auto", "full", "screened") switch { "full" => CostingMethod.Full, "screened" => CostingMethod.Screened, _ => CostingMethod.Auto },
            ScreenPartners = a.Int("--screen-partners", min: 0),
            CostSinglesFirst = a.Choice("--cost-singles", "chosen", "first") == "first",
            PrescreenPartners = Prescreen(a),
        };
        options.Validate(model); // before the calibration: e.g. an exact search the model is too deep for
        return options;
    }

    /// <summary>
    /// For `compress --plan P` of a plan with curvature-aligned coefficients: the element type P's curvature was
    /// computed in (--dtype, which must agree if given).
    /// </summary>
    public static torch.ScalarType RecordedDType(ParsedArgs a, CoefficientRecipe recipe, string planPath)
    {
        var dtype = recipe.ModelDtype switch
        {
            "float32" => torch.ScalarType.Float32,
            "float64" => torch.ScalarType.Float64,
            "bfloat16" => torch.ScalarType.BFloat16,
            _ => throw BadInputException.For(planPath, $"model_dtype '{recipe.ModelDtype}' is not float32, float64 or bfloat16"),
        };
        if (a.Has("--dtype") && a.Choice("--dtype", "float32", "float64", "bfloat16") != recipe.ModelDtype)
            throw new UsageException($"--dtype {a.String("--dtype")} conflicts with {planPath}, planned on the {recipe.ModelDtype} model (leave --dtype out to use the plan's)");
        return dtype;
    }

    /// <summary>
    /// For `compress --plan P` of a plan with curvature-aligned coefficients: refuses curvature options that differ
    /// from what P records (those left out are P's), and loads the curvature batch, which must be P's.
    /// </summary>
    public static LossBatch RecordedCurvatureBatch(ParsedArgs a, PretrainedModel model, string modelDir, CoefficientRecipe recipe, string planPath)
    {
        void Conflict(string option, string recorded) =>
            throw new UsageException($"{option}{(a.String(option) is { } v && !a.Flag(option) ? " " + v : "")} conflicts with {planPath}, planned with {recorded} (leave {option} out to use the plan's)");
        if (a.Has("--curvature") && a.Choice("--curvature", "exact", "kfac") != Name(recipe.Curvature)) Conflict("--curvature", $"--curvature {Name(recipe.Curvature)}");
        if (a.Has("--top") && a.Int("--top", min: 1) != recipe.TopK) Conflict("--top", $"--top {recipe.TopK}");
        if (a.Has("--trust") && a.Double("--trust", min: 0) != recipe.Trust) Conflict("--trust", $"--trust {Text(recipe.Trust)}");
        if (a.Flag("--gradient") && !recipe.UseGradient) Conflict("--gradient", "the first-order term left out");
        if (a.Has("--seed") && a.Int("--seed", min: 0) != recipe.Seed) Conflict("--seed", $"--seed {recipe.Seed}");
        var batch = CurvatureBatch(model, modelDir, a);
        if (batch.Description != recipe.CurvatureBatch)
        {
            string given = batch.Description;
            batch.Dispose();
            throw new UsageException($"--data/--curvature-windows/--curvature-stride give the curvature batch '{given}'; {planPath} was planned on '{recipe.CurvatureBatch}'");
        }
        return batch;
    }

    /// <summary>A few windows carry 1000 predictions each; a classifier needs more images for as many.</summary>
    public static LossBatch CurvatureBatch(PretrainedModel model, string modelDir, ParsedArgs a) => model.Task switch
    {
        ModelTask.CausalLanguageModel => CalibrationOptions.Load(model, modelDir, a, "--curvature-windows", "--curvature-stride", defaultCount: 4, defaultStride: 1),
        // A sentence is one prediction (its embedding): 64 sentences, every 16th of the file.
        ModelTask.SentenceEncoder => CalibrationOptions.Load(model, modelDir, a, "--curvature-windows", "--curvature-stride", defaultCount: 64, defaultStride: 16),
        _ => CalibrationOptions.Load(model, modelDir, a, "--curvature-windows", "--curvature-stride", defaultCount: 64, defaultStride: 16),
    };

    /// <summary>
    /// What a cell's cost depends on, hashed: config.json, the weight files (names, sizes, the first MiB of each: header
    /// and leading data), the data files' contents, the calibration and curvature batches, the model's dtype and the cost
    /// model's options (ratio and kept offsets give the ranks).
    /// </summary>
    public static string CellFingerprint(PretrainedModel model, string modelDir, ParsedArgs a, PlannerOptions o)
    {
        static string FileDigest(string path, long limit = long.MaxValue)
        {
            using var fs = File.OpenRead(path);
            var buffer = new byte[(int)Math.Min(fs.Length, Math.Min(limit, 1L << 30))];
            fs.ReadExactly(buffer);
            return $"{Path.GetFileName(path)} {fs.Length} {Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(buffer))}";
        }
        var parts = new List<string> { "geoshare-cells v1", File.ReadAllText(Path.Combine(modelDir, "config.json")) };
        parts.AddRange(Directory.GetFiles(modelDir, "*.safetensors").Order(StringComparer.Ordinal).Select(f => FileDigest(f, 1 << 20)));
        if (a.String("--data") is { } data) parts.Add("data " + FileDigest(data));
        if (a.String("--fashion-mnist") is { } fm) parts.Add("fashion-mnist " + Path.GetFullPath(fm));
        parts.Add($"calibration {a.Int("--calib-windows", min: 1)} {a.Int("--calib-stride", min: 1)}");
        parts.Add($"curvature batch {a.String("--curvature-windows")} {a.String("--curvature-stride")}");
        parts.Add(string.Join(" ", "options", Name(o.Curvature), o.TopK, Text(o.Tolerance), o.TraceProducts, o.KfacSamples, Text(o.Trust), o.UseGradient, o.Seed,
            Text(o.Ratio), string.Join(",", o.KeptOffsets.Select(Text)), CalibrationOptions.Name(model.DType)));
        return GroupCostCells.FingerprintOf(parts);
    }

    /// <summary>`--shard i/n`: i within 0..n−1.</summary>
    public static (int Shard, int Shards) Shard(ParsedArgs a)
    {
        string v = a.Required("--shard");
        var parts = v.Split('/');
        if (parts.Length == 2 && int.TryParse(parts[0], out int i) && int.TryParse(parts[1], out int n) && n >= 1 && i >= 0 && i < n) return (i, n);
        throw new UsageException($"--shard: '{BoundedFile.Quote(v)}' is not i/n with 0 ≤ i < n (e.g. 0/3, 1/3, 2/3)");
    }

    /// <summary>`plan --cells DIR --shard i/n`: calibration, curvature and the screen, then this shard's share of the group costs into DIR.</summary>
    public static GeoPlanner.ShardResult RunShard(PretrainedModel model, string modelDir, ParsedArgs a, PlannerOptions options, ConsoleProgress progress,
        LayerStream? stream = null, string? spillNear = null)
    {
        var (shard, shards) = Shard(a);
        using var grams = CalibrationGrams.Collect(model, modelDir, a, progress, stream, spillNear);
        using var batch = CurvatureBatch(model, modelDir, a);
        return GeoPlanner.CostShard(grams.Inputs(model, stream), batch, options, shard, shards, progress);
    }

    /// <summary>The planner's calibration grams: in memory, or (a layer-wise run) collected layer by layer and spilled to a folder that is removed with them.</summary>
    private sealed class CalibrationGrams : IDisposable
    {
        private readonly string? _spillDir;
        public IGramSource Grams { get; }

        private CalibrationGrams(IGramSource grams, string? spillDir)
        {
            Grams = grams;
            _spillDir = spillDir;
        }

        public PlanningInputs Inputs(PretrainedModel model, LayerStream? stream) =>
            stream is null ? PlanningInputs.Resident(model, Grams) : PlanningInputs.Streamed(stream, Grams);

        /// <param name="spillNear">a layer-wise run spills beside this path (the output), under a name of this process.</param>
        public static CalibrationGrams Collect(PretrainedModel model, string modelDir, ParsedArgs a, ConsoleProgress progress, LayerStream? stream, string? spillNear)
        {
            var calibration = CalibrationOptions.CalibrationSet(model, modelDir, a);
            if (stream is null) return new(ActivationGrams.Collect(model, calibration, model.Sites, progress), null);
            string dir = PartialOutputs.StagingName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(spillNear ?? modelDir)), "grams");
            PartialOutputs.Register(dir);
            try
            {
                var spilled = SpilledGrams.Collect(stream, calibration, model.Sites, dir, progress);
                progress.EndLine();
                return new(spilled, dir);
            }
            catch
            {
                PartialOutputs.Forget(dir); // removed by Collect
                throw;
            }
        }

        public void Dispose()
        {
            ((IDisposable)Grams).Dispose();
            if (_spillDir is not null) PartialOutputs.Forget(_spillDir); // removed by SpilledGrams' Dispose
        }
    }

    /// <summary>
    /// Calibration second moments (unless given), the curvature batch, and the planner. With <paramref name="stream"/>
    /// (the model is its shell): the grams are collected layer by layer and spilled beside <paramref name="spillNear"/>,
    /// the weights read from the checkpoint per group, K-FAC swept layer by layer.
    /// </summary>
    public static PlannerResult Run(PretrainedModel model, string modelDir, ParsedArgs a, PlannerOptions options, ConsoleProgress progress,
        IGramSource? grams = null, LayerStream? stream = null, string? spillNear = null)
    {
        using var own = grams is null ? CalibrationGrams.Collect(model, modelDir, a, progress, stream, spillNear) : null;
        grams ??= own!.Grams;
        using var batch = CurvatureBatch(model, modelDir, a);
        var inputs = stream is null ? PlanningInputs.Resident(model, grams) : PlanningInputs.Streamed(stream, grams);
        var r = GeoPlanner.Plan(inputs, batch, options, progress);
        progress.EndLine();
        ConsoleProgress.Status($"costing: {Name(r.Costing.Method)} ({r.Costing.Reason}); search: {Name(r.SearchChoice.Method)} ({r.SearchChoice.Reason})");
        return r;
    }

    public static void PrintSummary(PretrainedModel model, PlannerResult r)
    {
        var table = new TextTable("type", "groups (layers sharing a basis)", "ranks", "stored parameters", "predicted ΔL");
        foreach (var byType in r.Search.Groups.GroupBy(g => g.Type).OrderBy(g => model.ProjectionTypes.ToList().IndexOf(g.Key)))
        {
            var groups = byType.OrderBy(g => g.Layers[0]).ToList();
            table.Add(byType.Key, string.Join(" ", groups.Select(g => string.Join("+", g.Layers))), string.Join(",", groups.Select(g => g.Option.Rank)),
                groups.Sum(g => g.Option.Parameters), CommonOptions.Fmt(groups.Sum(g => g.Option.Predicted), "0.00000"));
        }
        table.Add("all", "", "", r.Search.Parameters, CommonOptions.Fmt(r.Search.Objective, "0.00000"));
        Console.WriteLine($"Geo-Sharing plan at ratio {CommonOptions.Fmt(r.Plan.Ratio ?? 0, "0.00")}: budget {r.Budget:N0} parameters; " +
            $"costing {Name(r.Costing.Method)}: {r.AllowedGroups} groups allowed, {r.ScreenedGroups} screened, {r.CandidateGroups} costed{(r.Costing.Method == CostingMethod.Screened ? $" ({r.ScreenInitialGroups} first, {r.ScreenRounds} verify searches)" : "")}{(r.Prescreen is { Partners: > 0 } p ? $", {r.PrescreenedOut} pairs prescreened out (each layer's {p.Partners} best partners kept)" : "")}{(r.CellGroups > 0 ? $" ({r.CellGroups} read from cells)" : "")}; " +
            $"search {r.Search.Method} {r.Search.Status} in {CommonOptions.Fmt(r.Search.Seconds, "0.0")} s ({Name(r.SearchChoice.Method)}: {r.SearchChoice.Reason}); " +
            $"curvature {CommonOptions.Fmt(r.CurvatureSeconds, "0")} s, screen {CommonOptions.Fmt(r.ScreenSeconds, "0")} s, costs {CommonOptions.Fmt(r.CostSeconds, "0")} s");
        Console.WriteLine(table);
        Console.WriteLine($"group sizes (groups × layers per group): {SharingPlan.DescribeGroupSizes(r.Plan.GroupSizes())}");
        if (r.GreedyComparison is { } g)
            Console.WriteLine($"greedy search on the same costs: predicted ΔL {CommonOptions.Fmt(g.Objective, "0.00000")} " +
                $"({CommonOptions.Fmt(100 * (g.Objective - r.Search.Objective) / Math.Max(Math.Abs(r.Search.Objective), 1e-300), "0.00")}% above the optimum)");
        else if (r.SearchChoice.Method == SearchMethod.Exact)
            Console.WriteLine("greedy search on the same costs: not run (it starts from every single layer; screening costed only those the search chose: --cost-singles first costs them all)");
    }

    /// <summary>The planner's result as JSON: the search, every chosen group's predicted cost, timings.</summary>
    public static PlannerSummary Summary(PlannerResult r) => new()
    {
        Search = new(r.Search.Method, r.Search.Status, r.Search.Objective, r.Search.Bound, r.Search.Seconds,
            Name(r.SearchChoice.Requested), Name(r.SearchChoice.Method), r.SearchChoice.Reason),
        GreedyOnTheSameCosts = r.GreedyComparison is not { } g ? null : new(g.Objective, g.Parameters, g.Seconds,
            (g.Objective - r.Search.Objective) / Math.Max(Math.Abs(r.Search.Objective), 1e-300)),
        Budget = r.Budget,
        StoredParameters = r.Search.Parameters,
        KeptFractions = r.KeptFractions,
        CandidateGroups = r.CandidateGroups,
        PictureGroups = r.PictureGroups,
        Costing = new(Name(r.Costing.Requested), Name(r.Costing.Method), r.Costing.Reason, r.AllowedGroups, r.ScreenedGroups, r.CandidateGroups, r.CellGroups, r.ScreenSeconds)
        {
            FirstSetGroups = r.Costing.Method == CostingMethod.Screened ? r.ScreenInitialGroups : null,
            VerifySearches = r.Costing.Method == CostingMethod.Screened ? r.ScreenRounds : null,
            BoundSeconds = r.Costing.Method == CostingMethod.Screened ? r.ScreenBoundSeconds : null,
            PrescreenPartners = r.Prescreen?.Partners,
            PrescreenReason = r.Prescreen?.Reason,
            PrescreenedOutPairs = r.Prescreen is null ? null : r.PrescreenedOut,
            PrescreenSeconds = r.Prescreen is null ? null : r.PrescreenSeconds,
        },
        CurvatureSeconds = r.CurvatureSeconds,
        CostSeconds = r.CostSeconds,
        Groups = r.Search.Groups.OrderBy(g => g.Type).ThenBy(g => g.Layers[0]).Select(g => new PlannedGroup(
            g.Type, g.Layers, g.Option.Rank, g.Option.Parameters, g.Option.Predicted, g.Option.Linear, g.Option.Quadratic,
            g.Option.HighCurvatureEnergy)).ToList(),
        GroupSizes = r.Plan.GroupSizes(),
        PairwiseCost = r.PairwiseCost.ToDictionary(kv => kv.Key, kv => PlannerSummary.Rows(kv.Value)),
        Blocks = r.Curvature.Values.Select(c => new PlannedBlockCurvature(c.Site, c.Method, c.TopValues, c.Corrections, c.Trace, c.TraceStandardError)).ToList(),
    };
}
