using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>Screened costing, the exact search on screened candidates, and plans made from shards of costed cells.</summary>
public class ScalablePlanningTests
{
    private static (PretrainedModel Model, ActivationGrams Grams, LanguageModelBatch Batch) TinyDeep(int layers)
    {
        var model = TinyModels.Gpt2Deep(layers);
        var (grams, batch) = TinyModels.RandomCalibration(model);
        return (model, grams, batch);
    }

    private static string Describe(PlannerResult r) => string.Join("; ", r.Plan.Types.OrderBy(t => t.Key, StringComparer.Ordinal)
        .Select(t => $"{t.Key}: {string.Join(",", t.Value.Coloring)} / {string.Join(",", t.Value.Ranks ?? [])} / {string.Join(",", (t.Value.PredictedLoss ?? []).Select(x => x.ToString("R")))}"));

    [Fact]
    public void ScreenedCostingCostsFewerGroupsAndItsPlanIsNoBetterThanTheFullOptimum()
    {
        var (model, grams, batch) = TinyDeep(8);
        using var _ = grams;
        using var __ = batch;
        var o = new PlannerOptions { Ratio = 0.4, TopK = 2, MaxGroupSize = 3, ScreenPartners = 2 };
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, o, null);
        try
        {
            using var full = GeoPlanner.Plan(model, grams, batch, o with { Costing = CostingMethod.Full }, curvature: curvature);
            using var screened = GeoPlanner.Plan(model, grams, batch, o with { Costing = CostingMethod.Screened }, curvature: curvature);
            // 3 shared types × (8 + 28 + 56) allowed groups, mlp.c_proj's 8 single layers.
            Assert.Equal(3 * 92 + 8, full.AllowedGroups);
            Assert.Equal(full.AllowedGroups, full.CandidateGroups);
            Assert.Equal((CostingMethod.Full, 0), (full.Costing.Method, full.ScreenedGroups));
            Assert.Equal(full.AllowedGroups, screened.AllowedGroups);
            Assert.Equal(CostingMethod.Screened, screened.Costing.Method);
            // Every pair is estimated; at most 2 pairs and 2 triples per layer are costed, plus every single layer.
            Assert.True(screened.ScreenedGroups >= 3 * (8 + 28), $"{screened.ScreenedGroups} screened");
            Assert.True(screened.CandidateGroups <= 3 * (8 + 8 * 2 + 8 * 2) + 8, $"{screened.CandidateGroups} costed");
            Assert.True(screened.CandidateGroups < full.CandidateGroups / 2, $"{screened.CandidateGroups} of {full.CandidateGroups} costed");
            // The full search is optimal over a superset of the screened candidates, both exact (CP-SAT).
            Assert.Equal(("cp-sat", "optimal", "cp-sat", "optimal"), (full.Search.Method, full.Search.Status, screened.Search.Method, screened.Search.Status));
            Assert.True(full.Search.Objective <= screened.Search.Objective + 1e-12 * Math.Abs(full.Search.Objective),
                $"full {full.Search.Objective} > screened {screened.Search.Objective}");
            Assert.True(screened.Search.Parameters <= screened.Budget);
            // Costs of the groups both costed are the same numbers.
            foreach (var g in screened.Search.Groups)
                Assert.Equal(g.Option.Predicted, full.Costs.Evaluate(g.Type, g.Layers, g.Option is { } ? full.Costs.Ranks(g.Type, g.Layers.Length, GeoPlanner.KeptFractions(o)) : []).Options.Single(x => x.Rank == g.Option.Rank).Predicted);
        }
        finally
        {
            foreach (var c in curvature.Values) c.Dispose();
        }
    }

    [Theory]
    [InlineData(0.3, CurvatureMethod.Kfac)]
    [InlineData(0.5, CurvatureMethod.Kfac)]
    [InlineData(0.4, CurvatureMethod.Exact)]
    public void ScreenedCostingFindsTheFullOptimumWhereItsBoundsHold(double ratio, CurvatureMethod method)
    {
        var (model, grams, batch) = TinyDeep(6);
        using var _ = grams;
        using var __ = batch;
        var o = new PlannerOptions { Ratio = ratio, TopK = 2, ScreenPartners = 1, Curvature = method };
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, o, null);
        try
        {
            using var full = GeoPlanner.Plan(model, grams, batch, o with { Costing = CostingMethod.Full }, curvature: curvature);
            using var screened = GeoPlanner.Plan(model, grams, batch, o with { Costing = CostingMethod.Screened }, curvature: curvature);
            // The bounds hold on every allowed group and rank: lower ≤ exact ≤ upper (to rounding).
            var kept = GeoPlanner.KeptFractions(o);
            foreach (var t in ShareableTypes.Default(model))
            {
                var groups = GeoPlanner.AllowedGroups(model, o)[t];
                foreach (var b in GroupScreen.Bounds(model, grams, curvature, t, groups, n => full.Costs.Ranks(t, n, kept)))
                {
                    var exact = full.Costs.Evaluate(t, b.Layers, b.Ranks);
                    for (int r = 0; r < b.Ranks.Length; r++)
                    {
                        double e = exact.Options[r].Predicted, tol = 1e-9 * Math.Abs(e);
                        Assert.True(b.Lower[r] <= e + tol && e <= b.Upper[r] + tol, $"{t} {string.Join("+", b.Layers)} rank {b.Ranks[r]}: {b.Lower[r]} / {e} / {b.Upper[r]}");
                    }
                }
            }
            // Cost-then-verify ends at the full plan's optimum (the same objective, every chosen group costed), costing fewer groups.
            Assert.True(screened.ScreenRounds >= 1);
            Assert.Equal(full.Search.Objective, screened.Search.Objective, 1e-9 * Math.Abs(full.Search.Objective));
            Assert.True(screened.CandidateGroups < full.CandidateGroups, $"{screened.CandidateGroups} of {full.CandidateGroups} costed");
            // From the single layers alone (no partners first) the loop reaches the same optimum.
            using var singles = GeoPlanner.Plan(model, grams, batch, o with { Costing = CostingMethod.Screened, ScreenPartners = 0, CostSinglesFirst = true }, curvature: curvature);
            Assert.Equal(full.Search.Objective, singles.Search.Objective, 1e-9 * Math.Abs(full.Search.Objective));
            var allowed = GeoPlanner.AllowedGroups(model, o);
            Assert.Equal(allowed.Values.Sum(v => v.Count(g => g.Length == 1)), singles.ScreenInitialGroups);
            Assert.True(singles.ScreenRounds >= 1);
            // And from nothing but the layers of types that never share (the default): single layers enter by their bounds and
            // are costed when chosen; the same optimum, no more groups costed.
            using var chosen = GeoPlanner.Plan(model, grams, batch, o with { Costing = CostingMethod.Screened, ScreenPartners = 0 }, curvature: curvature);
            Assert.Equal(full.Search.Objective, chosen.Search.Objective, 1e-9 * Math.Abs(full.Search.Objective));
            Assert.Equal(allowed.Values.Where(v => v.All(g => g.Length == 1)).Sum(v => v.Count), chosen.ScreenInitialGroups);
            Assert.True(chosen.CandidateGroups <= singles.CandidateGroups, $"{chosen.CandidateGroups} costed against {singles.CandidateGroups}");
            Assert.True(chosen.ScreenRounds >= 1);
        }
        finally
        {
            foreach (var c in curvature.Values) c.Dispose();
        }
    }

    [Fact]
    public void ThreeShardsOfCellsGiveTheOneProcessPlan()
    {
        var (model, grams, batch) = TinyDeep(6);
        using var _ = grams;
        using var __ = batch;
        using var tmp = new TempDir();
        // Shards cost the first set with every single layer in it: the one-process run that matches them does the same.
        var o = new PlannerOptions { Ratio = 0.3, TopK = 2, MaxGroupSize = 3, Costing = CostingMethod.Screened, ScreenPartners = 2, CostSinglesFirst = true };
        using var one = GeoPlanner.Plan(model, grams, batch, o);
        string dir = tmp.File("cells");
        var shards = Enumerable.Range(0, 3).Select(i => GeoPlanner.CostShard(model, grams, batch, o with { Cells = new GroupCostCells(dir, "fp") }, i, 3)).ToList();
        // The shards cost the screen's first set (single layers and each layer's best partners) between them, each group once;
        // the cost-then-verify loop's further groups are costed by the run that finishes.
        Assert.True(one.ScreenInitialGroups > 0 && one.ScreenInitialGroups <= one.CandidateGroups);
        Assert.Equal(one.ScreenInitialGroups, shards[0].Groups);
        Assert.Equal(one.ScreenInitialGroups, shards.Sum(s => s.Share));
        Assert.Equal(one.ScreenInitialGroups, shards.Sum(s => s.Computed));
        Assert.All(shards, s => Assert.Equal(0, s.FromCells));
        Assert.Equal(one.ScreenInitialGroups, Directory.GetFiles(dir, "*.json").Length);
        var cells = new GroupCostCells(dir, "fp");
        using var merged = GeoPlanner.Plan(model, grams, batch, o with { Cells = cells });
        Assert.Equal(Describe(one), Describe(merged));
        Assert.Equal(one.Search.Objective, merged.Search.Objective);
        Assert.Equal(one.CandidateGroups, merged.CandidateGroups);
        Assert.Equal(one.ScreenInitialGroups, merged.CellGroups); // the first set all came from the cells
        Assert.Equal(one.CandidateGroups - one.ScreenInitialGroups + one.PictureGroups, cells.Written); // only the verify loop's and the picture's groups were costed here
        // The default, single layers costed when chosen: the same plan, no more groups costed.
        using var chosen = GeoPlanner.Plan(model, grams, batch, o with { CostSinglesFirst = false });
        Assert.Equal(Describe(one), Describe(chosen));
        Assert.Equal(one.Search.Objective, chosen.Search.Objective);
        Assert.True(chosen.CandidateGroups <= one.CandidateGroups, $"{chosen.CandidateGroups} costed against {one.CandidateGroups}");

        // A cell costed for other inputs is an error naming the file, not a cost silently reused.
        var e = Assert.Throws<BadInputException>(() => GeoPlanner.Plan(model, grams, batch, o with { Cells = new GroupCostCells(dir, "other") }).Dispose());
        Assert.Contains("cells", e.Message);
        Assert.Contains("was costed for another model, data or cost-model options", e.Message);
    }

    [Fact]
    public void AShardOutsideItsRangeIsRefused()
    {
        var model = TinyModels.Gpt2();
        using var batch = TinyModels.TokenBatch(model);
        using var tmp = new TempDir();
        var e = Assert.Throws<UsageException>(() => GeoPlanner.CostShard(model, null!, batch,
            new PlannerOptions { Ratio = 0.3, Cells = new GroupCostCells(tmp.File("c"), "fp") }, 3, 3));
        Assert.Equal("shard: shard 3 of 3 is not within 0..2", e.Message);
    }
}
