using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>The pair prescreen of screened costing (<see cref="PairPrescreen"/>).</summary>
public class PrescreenTests
{
    /// <summary>A deep tiny GPT-2 whose mlp.c_fc layers come in pairs (0, 1), (2, 3), … with one column space per pair.</summary>
    private static (PretrainedModel Model, ActivationGrams Grams, LanguageModelBatch Batch) PairedColumnSpaces(int layers)
    {
        var model = TinyModels.Gpt2Deep(layers, seed: 9);
        var gen = new Generator(17);
        using (torch.no_grad())
        {
            for (int pair = 0; pair < layers / 2; pair++)
            {
                var site = model.Site("mlp.c_fc", 2 * pair);
                var u = torch.linalg.qr(torch.randn(site.InFeatures, 3, dtype: ScalarType.Float64, generator: gen)).Q; // [in, 3]
                foreach (int l in new[] { 2 * pair, 2 * pair + 1 })
                {
                    var w = u.matmul(torch.randn(3, site.OutFeatures, dtype: ScalarType.Float64, generator: gen)); // [in, out], rank 3
                    var d = (DenseLinear)model.GetProjection(model.Site("mlp.c_fc", l));
                    d.Weight.copy_(d.Layout == WeightLayout.InOut ? w : w.t());
                }
            }
        }
        var (grams, batch) = TinyModels.RandomCalibration(model);
        return (model, grams, batch);
    }

    [Fact]
    public void PrescreenFindsTheLayersThatShareAColumnSpace()
    {
        var (model, grams, batch) = PairedColumnSpaces(6);
        using var _ = grams;
        using var __ = batch;
        var inputs = PlanningInputs.Resident(model, grams);
        var layers = Enumerable.Range(0, 6).ToList();
        var affinity = PairPrescreen.Affinities(inputs, "mlp.c_fc", layers, subspace: 3, seed: 1);
        Assert.Equal(15, affinity.Count);
        long[] paired = [0b11, 0b1100, 0b110000];
        // A pair with one column space loses nothing in the partner's subspace beyond its own (affinity ≈ 0); two random
        // 3-dimensional column spaces of R⁸ lose most of each other's energy.
        foreach (var (mask, a) in affinity)
            if (paired.Contains(mask)) Assert.True(a > -0.01, $"pair {mask:b}: affinity {a}");
            else Assert.True(a < -0.2, $"pair {mask:b}: affinity {a}");
        var pairs = SetPartitions.Candidates(6, 2, false, new HashSet<int>()).Where(g => g.Length == 2).ToList();
        Assert.Equal(paired.ToHashSet(), PairPrescreen.Keep(affinity, pairs, partners: 1));
        // The same numbers again (a fixed seed), and each layer keeps at most its partners.
        Assert.Equal(affinity, PairPrescreen.Affinities(inputs, "mlp.c_fc", layers, subspace: 3, seed: 1));
        Assert.True(PairPrescreen.Keep(affinity, pairs, partners: 2).Count <= 6 * 2);
    }

    [Fact]
    public void PrescreenedPlanIsTheScreenedPlanWhenEveryPartnerIsKeptAndNoBetterWithFewer()
    {
        var (model, grams, batch) = PairedColumnSpaces(6);
        using var _ = grams;
        using var __ = batch;
        var o = new PlannerOptions { Ratio = 0.4, TopK = 2, Costing = CostingMethod.Screened };
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, o, null);
        try
        {
            using var screened = GeoPlanner.Plan(model, grams, batch, o with { PrescreenPartners = 0 }, curvature: curvature);
            using var all = GeoPlanner.Plan(model, grams, batch, o with { PrescreenPartners = 5 }, curvature: curvature);
            using var one = GeoPlanner.Plan(model, grams, batch, o with { PrescreenPartners = 1 }, curvature: curvature);
            Assert.Equal((0, 0), (screened.Prescreen!.Partners, screened.PrescreenedOut));
            Assert.Equal((5, 0), (all.Prescreen!.Partners, all.PrescreenedOut));
            Assert.Equal(screened.Search.Objective, all.Search.Objective);
            Assert.Equal(screened.ScreenedGroups, all.ScreenedGroups);
            // One partner a layer: at most 6 of 15 pairs of each of the 3 shared types bounded (mlp.c_fc: its three paired ones).
            Assert.True(one.PrescreenedOut >= 3 * 9, $"{one.PrescreenedOut} pairs prescreened out");
            Assert.Equal(screened.ScreenedGroups - one.PrescreenedOut, one.ScreenedGroups);
            Assert.True(one.Search.Objective >= screened.Search.Objective - 1e-12 * Math.Abs(screened.Search.Objective));
            Assert.All(one.Search.Groups.Where(g => g.Type == "mlp.c_fc" && g.Layers.Length == 2), g => Assert.Equal(g.Layers[0] + 1, g.Layers[1]));
            // Nothing is costed for the picture: a pair that was not bounded is a blank (NaN) cell, a kept one has the screen's estimate.
            Assert.Equal(0, one.PictureGroups);
            var fc = one.PairwiseCost["mlp.c_fc"];
            Assert.True(double.IsFinite(fc[0, 1]) && double.IsFinite(fc[2, 3]) && double.IsFinite(fc[4, 5]), "the kept pairs");
            Assert.True(double.IsNaN(fc[0, 2]) && double.IsNaN(fc[1, 5]), "pairs left out");
        }
        finally
        {
            foreach (var c in curvature.Values) c.Dispose();
        }
    }

    [Fact]
    public void AutoPrescreensOnlyBeyondTheWorkLimit()
    {
        Assert.Equal(0, GeoPlanner.ChoosePrescreen(null, 3e12).Partners);
        Assert.Equal(GeoPlanner.AutoPrescreenPartners, GeoPlanner.ChoosePrescreen(null, 7e13).Partners);
        Assert.Equal(0, GeoPlanner.ChoosePrescreen(0, 7e13).Partners);
        Assert.Equal(2, GeoPlanner.ChoosePrescreen(2, 1).Partners);
        // The bundled 12-layer GPT-2 is far below the limit: its screened plans bound every pair.
        var model = ModelLoader.Load(Repo.Gpt2, ScalarType.Float32);
        Assert.True(GeoPlanner.BoundWork(model, GeoPlanner.AllowedGroups(model, new PlannerOptions { Ratio = 0.3 })) < GeoPlanner.PrescreenMinWork);
    }
}
