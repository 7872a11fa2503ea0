using GeoShare.Sharing;

namespace GeoShare.Planning;

// The planner's part of the `--json` outputs (plan, compress --method geo, demo), shared by writer and readers;
// property names are the JSON's field names (snake_case), in the file's order.

/// <summary>The planner's result as JSON: the search, every chosen group's predicted cost, the pairwise costs, timings.</summary>
public sealed record PlannerSummary
{
    public required PlannerSearchSummary Search { get; init; }
    /// <summary>The greedy search on the exact search's costs (only when the exact search ran).</summary>
    public GreedyComparisonSummary? GreedyOnTheSameCosts { get; init; }
    public required long Budget { get; init; }
    public required long StoredParameters { get; init; }
    /// <summary>Kept fractions of each group's rank options (absent in cells written before 2026-12-07).</summary>
    public double[]? KeptFractions { get; init; }
    public required int CandidateGroups { get; init; }
    /// <summary>Groups costed only for the pairwise-cost pictures (absent in older cells).</summary>
    public int? PictureGroups { get; init; }
    /// <summary>How the candidate groups were chosen for exact costing (absent in cells written before screening).</summary>
    public PlannerCostingSummary? Costing { get; init; }
    public required double CurvatureSeconds { get; init; }
    public required double CostSeconds { get; init; }
    public required IReadOnlyList<PlannedGroup> Groups { get; init; }
    /// <summary>Group-size histogram of the plan: layers per group → number of groups, over the shared types (absent in cells written before it).</summary>
    public IReadOnlyDictionary<int, int>? GroupSizes { get; init; }
    /// <summary>Per matrix type, layers × layers: ΔL(pair) − ΔL(i) − ΔL(j).</summary>
    public required IReadOnlyDictionary<string, double[][]> PairwiseCost { get; init; }
    /// <summary>Absent in cells written before the block curvature was reported.</summary>
    public IReadOnlyList<PlannedBlockCurvature>? Blocks { get; init; }

    /// <summary>The pairwise costs as matrices (what the heatmaps draw).</summary>
    public Dictionary<string, double[,]> PairwiseCostMatrices() => PairwiseCost.ToDictionary(kv => kv.Key, kv =>
    {
        var rows = kv.Value;
        var m = new double[rows.Length, rows.Length];
        for (int r = 0; r < rows.Length; r++) for (int c = 0; c < rows.Length; c++) m[r, c] = rows[r][c];
        return m;
    });

    public static double[][] Rows(double[,] m) =>
        Enumerable.Range(0, m.GetLength(0)).Select(i => Enumerable.Range(0, m.GetLength(1)).Select(j => m[i, j]).ToArray()).ToArray();
}

/// <summary>Requested, chosen and reason are absent in cells written before `--search auto`.</summary>
public sealed record PlannerSearchSummary(string Method, string Status, double Objective, double? Bound, double Seconds,
    string? Requested = null, string? Chosen = null, string? Reason = null);

/// <summary>
/// Full or screened costing: groups the constraints allow, groups the screen estimated, groups costed exactly (the
/// search's candidates), how many of those were read from a cells folder, and the screen's time.
/// </summary>
public sealed record PlannerCostingSummary(string Requested, string Chosen, string Reason, int AllowedGroups, int ScreenedGroups, int CostedGroups,
    int FromCells, double ScreenSeconds)
{
    /// <summary>Screened costing: groups of the first costed set (single layers, each layer's best partners by the upper bound).</summary>
    public int? FirstSetGroups { get; init; }
    /// <summary>Screened costing: exact searches of the cost-then-verify loop (0: not run, the bounds are not bounds with the first-order term).</summary>
    public int? VerifySearches { get; init; }
    /// <summary>Screened costing: seconds of bounding the groups.</summary>
    public double? BoundSeconds { get; init; }
    /// <summary>Screened costing: partners each layer kept in the pair prescreen (0: every allowed pair bounded), why, the allowed
    /// pairs it left unbounded (out of the search) and its seconds; absent in results written before the prescreen.</summary>
    public int? PrescreenPartners { get; init; }
    public string? PrescreenReason { get; init; }
    public int? PrescreenedOutPairs { get; init; }
    public double? PrescreenSeconds { get; init; }
}

public sealed record GreedyComparisonSummary(double Objective, long Parameters, double Seconds, double RelativeGap);

/// <summary>One group of the chosen plan with its rank and predicted loss increase.</summary>
public sealed record PlannedGroup(string Type, int[] Layers, int Rank, long Parameters, double PredictedLoss, double Linear, double Quadratic,
    double HighCurvatureEnergy);

/// <summary>The planner's curvature of one block.</summary>
public sealed record PlannedBlockCurvature(string Site, string Method, double[] TopEigenvalues, double[] Corrections, double Trace, double? TraceStandardError);

/// <summary>`geoshare plan --json`: the options, the planner's summary and the plan it wrote.</summary>
public sealed record PlanOutput
{
    public string Command { get; init; } = "plan";
    public required string Model { get; init; }
    public required string ModelType { get; init; }
    public required double Ratio { get; init; }
    public required string Curvature { get; init; }
    public required PlanOutputOptions Options { get; init; }
    public required PlannerSummary Planner { get; init; }
    public required SharingPlan Plan { get; init; }
    public required string PlanFile { get; init; }
    public required IReadOnlyList<string> Pictures { get; init; }
    public required int Threads { get; init; }
    public required string Allocator { get; init; }
    public required double WallSeconds { get; init; }
}

/// <summary>The planner options that `plan --json` records.</summary>
public sealed record PlanOutputOptions(int TopK, int MaxGroupSize, bool Contiguous, int[] PrivateLayers, IReadOnlyList<string>? SharedTypes, string Search,
    double Trust, double[] KeptOffsets);
