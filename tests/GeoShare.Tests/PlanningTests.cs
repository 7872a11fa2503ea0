using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

public class PlanningTests
{
    [Fact]
    public void CanonicalEnumerationListsEverySetPartitionOnce()
    {
        long[] bell = [1, 1, 2, 5, 15, 52, 203, 877, 4140];
        for (int n = 1; n <= 8; n++)
        {
            var all = SetPartitions.Enumerate(n).Select(c => string.Join(",", c)).ToList();
            Assert.Equal(bell[n], all.Count);
            Assert.Equal(bell[n], SetPartitions.Bell(n));
            Assert.Equal(all.Count, all.Distinct().Count());
        }
        Assert.Equal(4_213_597, SetPartitions.Bell(12));
        // Every one of the 5⁵ colorings of 5 layers relabels to exactly one enumerated canonical coloring.
        var canonical = SetPartitions.Enumerate(5).Select(c => string.Join(",", c)).ToHashSet();
        var seen = new HashSet<string>();
        for (int code = 0; code < 3125; code++)
        {
            var coloring = Enumerable.Range(0, 5).Select(i => code / (int)Math.Pow(5, i) % 5).ToArray();
            var key = string.Join(",", SharingPlan.Canonical(coloring));
            Assert.Contains(key, canonical);
            seen.Add(key);
        }
        Assert.Equal(canonical.Count, seen.Count);
        Assert.All(SetPartitions.Enumerate(6), c => Assert.True(SharingPlan.IsCanonical(c)));
    }

    private static (PretrainedModel Model, ActivationGrams Grams, LanguageModelBatch Batch) TinyDeep(int layers)
    {
        var model = TinyModels.Gpt2Deep(layers);
        var (grams, batch) = TinyModels.RandomCalibration(model);
        return (model, grams, batch);
    }

    [Fact]
    public void ExactSearchFindsTheBruteForceOptimumOverAllSetPartitions()
    {
        var (model, grams, batch) = TinyDeep(5);
        var options = new PlannerOptions { Ratio = 0.4, Curvature = CurvatureMethod.Exact, TopK = 2, Tolerance = 1e-8, TraceProducts = 16, UseGradient = true };
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, options, null);
        using var costs = new GroupCostEvaluator(model, grams, curvature, trust: 0.5, useGradient: true);
        string[] types = ["attn.c_attn", "mlp.c_fc"];
        var searches = types.Select(t => new TypeSearch(t, 5, SetPartitions.Candidates(5, 5, false, new HashSet<int>())
            .Select(g => costs.Evaluate(t, g, costs.Ranks(t, g.Length, [0.35, 0.7]))).ToList())).ToList();
        Assert.Equal(31, searches[0].Candidates.Count);
        long dense = types.Sum(t => 5L * model.Site(t, 0).InFeatures * model.Site(t, 0).OutFeatures);
        foreach (double fraction in new[] { 0.3, 0.5, 0.8 })
        {
            long budget = (long)(fraction * dense);
            var exact = ColoringSearch.Exact(searches, budget);
            var brute = ColoringSearch.BruteForce(searches, budget);
            Assert.Equal("optimal", exact.Status);
            Assert.True(exact.Parameters <= budget);
            double scale = searches.SelectMany(s => s.Candidates).SelectMany(c => c.Options).Max(o => Math.Abs(o.Predicted));
            Assert.True(Math.Abs(exact.Objective - brute.Objective) <= 1e-6 * scale,
                $"budget {fraction}: CP-SAT {exact.Objective:G10} vs brute force {brute.Objective:G10}");
            // Greedy is a heuristic: never better than the optimum; its gap is what the planner reports.
            var greedy = ColoringSearch.Greedy(types.Select(t => (t, 5)).ToList(),
                (t, g) => costs.Evaluate(t, g, costs.Ranks(t, g.Length, [0.35, 0.7])), budget);
            Assert.True(greedy.Parameters <= budget);
            Assert.True(greedy.Objective >= brute.Objective - 1e-9 * scale);
        }
        foreach (var c in curvature.Values) c.Dispose();
        grams.Dispose();
    }

    [Fact]
    public void PredictedLossChangeOfATinyPerturbationIsRightToSecondOrder()
    {
        var model = TinyModels.Gpt2();
        var batch = TinyModels.TokenBatch(model);
        var weight = (TorchSharp.Modules.Parameter)model.ParametersByName()["transformer.h.1.mlp.c_fc.weight"]; // Conv1D: [in, out]
        using var h = new BlockHessian(model, batch, [weight]);
        using var dense = h.Operator.Dense();
        var (values, vectors) = torch.linalg.eigh(dense);
        long n = weight.numel();
        var block = new BlockCurvatureModel
        {
            Site = "transformer.h.1.mlp.c_fc", Method = "exact", Gradient = h.Operator.Gradient.reshape(weight.shape).clone(),
            TopValues = values.data<double>().ToArray(), TopVectors = vectors.t().reshape(n, weight.shape[0], weight.shape[1]).contiguous(),
            A = torch.eye(weight.shape[0], dtype: ScalarType.Float64), OutputWeights = torch.zeros(weight.shape[1], dtype: ScalarType.Float64),
            Corrections = values.data<double>().ToArray(),
        };
        double L0 = batch.Loss(model).item<double>();
        var direction = torch.randn(weight.shape, dtype: ScalarType.Float64, generator: new Generator(9));
        direction.div_(direction.norm());
        double Error(double eps)
        {
            var delta = direction.MulScalar(eps);
            using (torch.no_grad()) weight.add_(delta, Scalars.One);
            double measured = batch.Loss(model).item<double>() - L0;
            using (torch.no_grad()) weight.sub_(delta);
            double predicted = block.Predict(delta);
            Assert.True(Math.Abs(block.Quadratic(delta)) > 1e-3 * Math.Abs(block.Linear(delta)) * eps, "the quadratic term is negligible: the test would not see it");
            return Math.Abs(measured - predicted);
        }
        double e1 = Error(1e-2), e2 = Error(5e-3);
        // Right to second order: the error is third order, so halving ε divides it by about 8.
        Assert.True(e1 / e2 > 6 && e1 / e2 < 10, $"error ratio {e1 / e2:F2} (errors {e1:E2}, {e2:E2})");
        block.Dispose();
    }

    [Theory]
    [InlineData(CurvatureMethod.Exact)]
    [InlineData(CurvatureMethod.Kfac)]
    public void BlockModelAgreesWithTheCurvatureOnItsTopEigenvectors(CurvatureMethod method)
    {
        // cᵢ = λᵢ − Vᵢᵀ(A ⊗ diag γ)Vᵢ: where it is positive, Vᵢᵀ Ĥ Vᵢ = λᵢ (the Vᵢ orthonormal), each direction on its own.
        var (model, grams, batch) = TinyDeep(2);
        var options = new PlannerOptions { Ratio = 0.5, Curvature = method, TopK = 3, Tolerance = 1e-8, TraceProducts = 16 };
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, options, null);
        int checkedPairs = 0;
        foreach (var m in curvature.Values)
        {
            using var vectors = m.TopVectors;
            for (int i = 0; i < m.TopValues.Length; i++)
            {
                if (m.Corrections[i] <= 0) continue;
                checkedPairs++;
                Assert.Equal(m.TopValues[i], m.Quadratic(vectors[i]), 1e-9 * Math.Abs(m.TopValues[i]));
            }
        }
        Assert.True(checkedPairs > 0, "no top pair with a positive correction: nothing was checked");
        foreach (var c in curvature.Values) c.Dispose();
        grams.Dispose();
    }

    [Theory]
    [InlineData(CurvatureMethod.Exact)]
    [InlineData(CurvatureMethod.Kfac)] // top vectors kept as factors, A read from the borrowed gram
    public void AlignedCoefficientsAreOptimalWithinTheTrustRegionAndScoredConsistently(CurvatureMethod method)
    {
        var (model, grams, batch) = TinyDeep(3);
        var options = new PlannerOptions { Ratio = 0.5, Curvature = method, TopK = 3, Tolerance = 1e-8, TraceProducts = 16, UseGradient = true };
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, options, null);
        var sites = new[] { model.Site("mlp.c_fc", 0), model.Site("mlp.c_fc", 2) };
        var weights = sites.Select(s => model.GetProjection(s).WeightInOut().detach().to_type(ScalarType.Float64).clone()).ToArray();
        var basis = SharedBasis.Compute(weights, grams[sites[0].Name].add(grams[sites[1].Name], Scalars.One), 6);
        for (int i = 0; i < 2; i++)
        {
            var m = curvature[sites[i].Name];
            Assert.Equal(method == CurvatureMethod.Kfac, m.TopFactors is not null);
            using var aligned = new AlignedCoefficients(basis.Basis, weights[i], m);
            foreach (int rank in new[] { 3, 6 })
            foreach (double trust in new[] { 0.0, 0.5, 4.0 })
            {
                var s = aligned.Solve(rank, trust);
                var b = basis.Basis.narrow(1, 0, rank);
                var delta = b.matmul(aligned.Coefficients(rank, trust)).sub(weights[i]);
                Assert.Equal(m.Predict(delta), s.Predicted, 1e-9 * Math.Max(1, Math.Abs(s.Predicted)));
                Assert.Equal(delta.norm().item<double>(), s.DeltaNorm, 1e-8);
                Assert.True(s.DeltaNorm <= s.TrustRadius * 1.001, $"‖δ‖ {s.DeltaNorm} beyond the trust radius {s.TrustRadius}");
                // Basis Sharing's coefficients lie inside the region, so the aligned ones predict no more loss.
                var bta = b.t().matmul(m.A);
                var bs = b.matmul(torch.linalg.solve(bta.matmul(b), bta.matmul(weights[i]))).sub(weights[i]);
                Assert.Equal(bs.norm().item<double>(), s.BasisSharingDeltaNorm, 1e-8);
                Assert.True(s.Predicted <= m.Predict(bs) + 1e-12, $"aligned {s.Predicted} > Basis Sharing {m.Predict(bs)}");
                // The solution minimises the model over the ball of its own radius ‖δ(ν)‖ (exactly, for the ν found by
                // bisection): nearby coefficients in that ball do not predict less.
                var gen = new Generator((ulong)(rank * 10 + i));
                var c = aligned.Coefficients(rank, trust);
                int checks = 0;
                for (int trial = 0; trial < 5; trial++)
                {
                    var other = b.matmul(c.add(torch.randn(c.shape, dtype: ScalarType.Float64, generator: gen).MulScalar(1e-3 * c.norm().item<double>() / Math.Sqrt(c.numel())), Scalars.One)).sub(weights[i]);
                    if (other.norm().item<double>() <= s.DeltaNorm)
                    {
                        checks++;
                        Assert.True(m.Predict(other) >= s.Predicted - 1e-9 * Math.Abs(s.Predicted), $"rank {rank} τ {trust}: {m.Predict(other)} < {s.Predicted}");
                    }
                }
                Assert.True(checks > 0, $"rank {rank} τ {trust}: no perturbation fell inside the ball; optimality was not checked");
            }
        }
        foreach (var c in curvature.Values) c.Dispose();
        grams.Dispose();
    }

    [Fact]
    public void CandidateGroupsCountOnlyWhatTheSearchCostedNotThePicture()
    {
        var model = TinyModels.Gpt2();
        var rng = new Random(11);
        var windows = TokenWindows.FromIds("random", Enumerable.Range(0, 8 * 32).Select(_ => rng.Next(13)).ToArray(), 8);
        using var grams = ActivationGrams.Collect(model, CalibrationSet.FromWindows(windows, windows.Select(32, 1)), model.Sites);
        using var batch = TinyModels.TokenBatch(model, windows: 4);
        // Groups of one: the search costs 4 types × 2 layers; the picture of the 3 shared types adds their one pair each.
        using var r = GeoPlanner.Plan(model, grams, batch, new PlannerOptions { Ratio = 0.4, TopK = 2, MaxGroupSize = 1 });
        Assert.Equal(8, r.CandidateGroups);
        Assert.Equal(3, r.PictureGroups);
        Assert.Equal(3, r.PairwiseCost.Count);
        // 8 groups × the default's 7 rank options at 0.4 (kept 0.2, 0.4 … 0.8, 0.98).
        Assert.Equal(new SearchChoice(SearchMethod.Exact, SearchMethod.Auto, "auto: 56 group × rank choices is within the exact search's limit of 40,000"), r.SearchChoice);
        Assert.Equal((CostingMethod.Full, 8, 0, 0), (r.Costing.Method, r.AllowedGroups, r.ScreenedGroups, r.CellGroups));
        var recipe = r.Plan.Coefficients!;
        Assert.Equal((CurvatureMethod.Kfac, 2, 0.5, "random tokens", "float64"), (recipe.Curvature, recipe.TopK, recipe.Trust, recipe.CurvatureBatch, recipe.ModelDtype));
    }

    [Fact]
    public void RankOptionsReachNearlyUncompressedLayersAtAnyRatio()
    {
        // 1 − ratio − 0.4 … + 0.3 by 0.1, fractions above 0.98 lowered to it (once), those below 0.02 left out.
        var wide = PlannerOptions.WideKeptOffsets;
        Assert.Equal([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.98], GeoPlanner.KeptFractions(new PlannerOptions { Ratio = 0.3, KeptOffsets = wide }));
        Assert.Equal([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.98], GeoPlanner.KeptFractions(new PlannerOptions { Ratio = 0.7, KeptOffsets = wide }));
        Assert.Equal([0.4, 0.6, 0.7, 0.8, 0.9, 0.98], GeoPlanner.KeptFractions(new PlannerOptions { Ratio = 0.2 }));
        Assert.Equal([0.1, 0.2, 0.3, 0.4, 0.5, 0.98], GeoPlanner.KeptFractions(new PlannerOptions { Ratio = 0.7 }));
        Assert.Equal([0.6, 0.7, 0.8, 0.9, 0.98], GeoPlanner.KeptFractions(new PlannerOptions { Ratio = 0.2, KeptOffsets = PlannerOptions.FirstKeptOffsets }));
        Assert.Equal([0.5, 0.98], GeoPlanner.KeptFractions(new PlannerOptions { Ratio = 0.5, KeptOffsets = [0, 0.6, 0.9] }));
    }

    [Fact]
    public void SearchAutoIsExactUpToItsChoiceLimitAndExactRunsAtAnyDepth()
    {
        Assert.Equal(SearchMethod.Exact, GeoPlanner.ChooseSearch(SearchMethod.Auto, 12, 1_560).Method);
        Assert.Equal(SearchMethod.Exact, GeoPlanner.ChooseSearch(SearchMethod.Auto, 32, GeoPlanner.ExactSearchMaxVariables).Method);
        Assert.Equal(SearchMethod.Greedy, GeoPlanner.ChooseSearch(SearchMethod.Auto, 32, GeoPlanner.ExactSearchMaxVariables + 1).Method);
        Assert.Equal(SearchMethod.Greedy, GeoPlanner.ChooseSearch(SearchMethod.Greedy, 4, 10).Method);
        var deep = GeoPlanner.ChooseSearch(SearchMethod.Exact, 32, 1_000_000);
        Assert.Equal((SearchMethod.Exact, "requested; 1,000,000 group × rank choices on 32 layers per type"), (deep.Method, deep.Reason));
        // 12 layers, groups of 2, 7 ranks (the default's at 0.3): 78 groups of each of the 3 shared types and 12 single layers of mlp.c_proj, × 7.
        Assert.Equal((3 * 78 + 12) * 7L, GeoPlanner.SearchVariables(TinyModels.Gpt2Deep(12), new PlannerOptions { Ratio = 0.3 }, null));
    }

    [Fact]
    public void CostingAutoIsFullForSmallWorkAndScreenedBeyond()
    {
        Assert.Equal(CostingMethod.Full, GeoPlanner.ChooseCosting(CostingMethod.Auto, GeoPlanner.FullCostingMaxWork, 2).Method);
        Assert.Equal(CostingMethod.Screened, GeoPlanner.ChooseCosting(CostingMethod.Auto, 2 * GeoPlanner.FullCostingMaxWork, 2).Method);
        Assert.Equal(CostingMethod.Full, GeoPlanner.ChooseCosting(CostingMethod.Screened, 1e20, 1).Method); // groups of one: nothing to screen
        Assert.Equal(CostingMethod.Full, GeoPlanner.ChooseCosting(CostingMethod.Full, 1e20, 3).Method);
        // The bundled GPT-2's shape (12 × d256): full costing's estimated work is within the limit, so its plans stay the full ones.
        var allowed = GeoPlanner.AllowedGroups(TinyModels.Gpt2Deep(2), new PlannerOptions { Ratio = 0.3 });
        Assert.Equal(3, allowed["attn.c_attn"].Count);
        Assert.Equal(2, allowed["mlp.c_proj"].Count);
    }

    [Theory]
    [InlineData("ratio", "ratio: must be within (0, 1), got 0")]
    [InlineData("top", "top: must be at least 1, got 0")]
    [InlineData("private", "private: layer 2 is not a layer index in 0..1")]
    [InlineData("offsets", "kept_offsets: [-0.9] leave no kept fraction of at least 0.02 at ratio 0.3")]
    public void BadPlannerOptionsAreRefusedInTheLibrarysTerms(string what, string message)
    {
        var model = TinyModels.Gpt2();
        var o = new PlannerOptions { Ratio = 0.3 };
        o = what switch
        {
            "ratio" => o with { Ratio = 0 },
            "top" => o with { TopK = 0 },
            "private" => o with { PrivateLayers = new HashSet<int> { 2 } },
            _ => o with { KeptOffsets = [-0.9] },
        };
        Assert.Equal(message, Assert.Throws<UsageException>(() => o.Validate(model)).Message);
    }
}
