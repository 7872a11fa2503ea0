using System.Diagnostics;
using GeoShare;
using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// Does the second-order block model rank sharing plans the way the loss does? For many plans of GPT-2 (every
/// heuristic at several ratios, and Geo-Sharing's own), the predicted increase Σ_blocks ⟨g, δ⟩ + ½δᵀĤδ under the
/// exact and the K-FAC models against the measured increase of the calibration loss; Spearman's ρ for each. Then,
/// for a few plans, how much of the true quadratic form δᵀHδ (all shared blocks together, by Hessian-vector
/// products) lies off the block diagonal: the cross-layer terms the planner ignores.
/// </summary>
static class Fidelity
{
    const string ModelDir = "assets/models/gpt2-kjv-brown";

    public static int Run(string jsonOut)
    {
        var total = Stopwatch.StartNew();
        var tokenizer = ByteLevelBpeTokenizer.Load(ModelDir);
        var windows = TokenWindows.FromFile("assets/data/corpus/valid.txt", tokenizer, 256);
        var calibration = CalibrationSet.FromWindows(windows, windows.Select(64, 16));
        var lossWindows = windows.Select(32, 16, 8); // measured on calibration-distribution windows not used for whitening
        var dense = ModelLoader.Load(ModelDir);
        using var grams = ActivationGrams.Collect(dense, calibration, dense.Sites);
        using var batch = LanguageModelBatch.FromWindows(windows, windows.Select(4, 1));
        double baseLoss = MeanLoss(dense, windows, lossWindows);
        Log($"dense loss {baseLoss:F6}");

        var models = new Dictionary<string, Dictionary<string, BlockCurvatureModel>>();
        var curvatureSeconds = new Dictionary<string, double>();
        foreach (var method in new[] { CurvatureMethod.Kfac, CurvatureMethod.Exact })
        {
            var sw = Stopwatch.StartNew();
            var o = new PlannerOptions { Ratio = 0.3, Curvature = method, UseGradient = true }; // Predict includes ⟨g, δ⟩: keep the gradient
            models[Name(method)] = BlockCurvatureModel.Collect(dense, batch, grams, o, null);
            curvatureSeconds[Name(method)] = sw.Elapsed.TotalSeconds;
            Log($"{Name(method)} curvature {sw.Elapsed.TotalSeconds:F0} s");
        }
        var originals = dense.Sites.ToDictionary(s => s.Name, s => dense.GetProjection(s).WeightInOut().detach().to_type(ScalarType.Float64).clone());

        var plans = new List<(string Label, SharingPlan Plan, ICoefficientSolver? Solver)>();
        foreach (double ratio in new[] { 0.1, 0.2, 0.3, 0.4 })
            foreach (var m in Heuristics)
                plans.Add(($"{m}-{ratio}", Baselines.Create(m, dense, ratio, new BaselineOptions { Seed = 1 }, grams), null));
        var planners = new List<PlannerResult>();
        foreach (var method in new[] { CurvatureMethod.Kfac, CurvatureMethod.Exact })
            foreach (double ratio in new[] { 0.2, 0.4 })
            {
                var r = GeoPlanner.Plan(dense, grams, batch, new PlannerOptions { Ratio = ratio, Curvature = method }, null, models[Name(method)]);
                planners.Add(r);
                plans.Add(($"geo-{Name(method)}-{ratio}", r.Plan, new CurvatureAlignedSolver(r.Costs)));
                Log($"geo {Name(method)} {ratio}: planned");
            }

        var rows = new List<Row>();
        var deltas = new Dictionary<string, Dictionary<string, Tensor>>();
        foreach (var (label, plan, solver) in plans)
        {
            var model = ModelLoader.Load(ModelDir);
            PlanCompressor.Apply(model, plan, grams, new CompressionOptions { Coefficients = solver });
            var delta = model.Sites.ToDictionary(s => s.Name, s => model.GetProjection(s).WeightInOut().detach().to_type(ScalarType.Float64).sub(originals[s.Name]));
            double measured = MeanLoss(model, windows, lossWindows) - baseLoss;
            var predicted = models.ToDictionary(kv => kv.Key, kv => delta.Sum(d => kv.Value[d.Key].Predict(d.Value)));
            var quadratic = models.ToDictionary(kv => kv.Key, kv => delta.Sum(d => 0.5 * kv.Value[d.Key].Quadratic(d.Value)));
            rows.Add(new Row(label, plan.Ratio ?? 0, measured, predicted["exact"], predicted["kfac"], quadratic["exact"], quadratic["kfac"]));
            Log($"{label}: measured {measured:F5}, predicted exact {predicted["exact"]:F5}, kfac {predicted["kfac"]:F5}");
            if (label is "adjacent-0.3" or "all-0.3" or "geo-kfac-0.4") deltas[label] = delta;
            else foreach (var t in delta.Values) t.Dispose();
            model.Dispose();
        }
        foreach (var p in planners) p.Dispose();

        var spearman = new
        {
            exact = Spearman(rows.Select(r => r.PredictedExact).ToArray(), rows.Select(r => r.Measured).ToArray()),
            kfac = Spearman(rows.Select(r => r.PredictedKfac).ToArray(), rows.Select(r => r.Measured).ToArray()),
            exact_quadratic_only = Spearman(rows.Select(r => r.QuadraticExact).ToArray(), rows.Select(r => r.Measured).ToArray()),
            kfac_quadratic_only = Spearman(rows.Select(r => r.QuadraticKfac).ToArray(), rows.Select(r => r.Measured).ToArray()),
        };
        Log($"Spearman: exact {spearman.exact:F3}, kfac {spearman.kfac:F3}");

        var cross = CrossLayer(dense, batch, deltas);
        JsonOutput.Write(jsonOut, new
        {
            benchmark = "fidelity", model = ModelDir, curvature_batch = batch.Description, calibration = calibration.Description,
            loss_windows = lossWindows, dense_loss = baseLoss, plans = rows.Count, spearman, curvature_seconds = curvatureSeconds,
            rows, cross_layer = cross, threads = torch.get_num_threads(), wall_seconds = total.Elapsed.TotalSeconds,
        });
        return 0;
    }

    /// <summary>
    /// The same question for the ViT, K-FAC only (one exact product over its blocks takes about 20 s here): at ratios
    /// where the methods separate, does the planner's score ½δᵀĤδ rank the heuristics' and geo's plans like the
    /// measured increase of the mean loss on training images outside the calibration and curvature sets?
    /// </summary>
    public static int RunImages(string jsonOut, string fashionMnist)
    {
        const string vitDir = "assets/models/vit-fashion-mnist";
        var total = Stopwatch.StartNew();
        var dense = ModelLoader.Load(vitDir);
        var pre = ImagePreprocessor.Load(vitDir);
        var train = ImageDataset.LoadFashionMnist(fashionMnist, "train");
        var calibration = CalibrationSet.FromImages(train, pre, train.Select(64, 16));
        using var grams = ActivationGrams.Collect(dense, calibration, dense.Sites);
        using var batch = ClassificationBatch.FromImages(train, pre, train.Select(64, 16), dense.DType);
        var lossImages = train.Select(2000, 16, 8); // not in the calibration or curvature images (0, 16, 32, …)
        double baseLoss = Evaluator.Accuracy(dense, train, pre, indices: lossImages).MeanNll;
        Log($"dense loss {baseLoss:F6} on {lossImages.Length} training images");
        var curvature = BlockCurvatureModel.Collect(dense, batch, grams, new PlannerOptions { Ratio = 0.5, Curvature = CurvatureMethod.Kfac }, null);
        var originals = dense.Sites.ToDictionary(s => s.Name, s => dense.GetProjection(s).WeightInOut().detach().to_type(ScalarType.Float64).clone());

        var rows = new List<object>();
        var byRatio = new List<object>();
        foreach (double ratio in new[] { 0.6, 0.8 })
        {
            var plans = new List<(string Label, SharingPlan Plan, ICoefficientSolver? Solver, PlannerResult? Planner)>();
            foreach (var m in Heuristics)
                plans.Add(($"{m}-{ratio}", Baselines.Create(m, dense, ratio, new BaselineOptions { Seed = 1 }, grams), null, null));
            foreach (int maxGroup in new[] { 2, 3 })
            {
                var r = GeoPlanner.Plan(dense, grams, batch, new PlannerOptions { Ratio = ratio, Curvature = CurvatureMethod.Kfac, MaxGroupSize = maxGroup }, null, curvature);
                plans.Add(($"geo-group{maxGroup}-{ratio}", r.Plan, new CurvatureAlignedSolver(r.Costs), r));
            }
            var measured = new List<double>();
            var scored = new List<double>();
            foreach (var (label, plan, solver, planner) in plans)
            {
                var model = ModelLoader.Load(vitDir);
                PlanCompressor.Apply(model, plan, grams, new CompressionOptions { Coefficients = solver });
                double q = QuadraticScore(model, originals, curvature);
                double m = Evaluator.Accuracy(model, train, pre, indices: lossImages).MeanNll - baseLoss;
                measured.Add(m);
                scored.Add(q);
                rows.Add(new { plan = label, ratio, measured = m, quadratic_kfac = q });
                Log($"{label}: measured {m:E4}, ½δᵀĤδ (K-FAC) {q:E4}");
                model.Dispose();
                planner?.Dispose();
            }
            double rho = Spearman(scored.ToArray(), measured.ToArray());
            byRatio.Add(new { ratio, plans = plans.Count, spearman_kfac_quadratic = rho });
            Log($"ratio {ratio}: Spearman {rho:F3} over {plans.Count} plans");
        }
        foreach (var c in curvature.Values) c.Dispose();
        JsonOutput.Write(jsonOut, new
        {
            benchmark = "fidelity-images", model = vitDir, curvature_batch = batch.Description, calibration = calibration.Description,
            loss_images = $"{lossImages.Length} training images from 8, step 16", dense_loss = baseLoss, by_ratio = byRatio, rows,
            threads = torch.get_num_threads(), wall_seconds = total.Elapsed.TotalSeconds,
        });
        return 0;
    }

    /// <summary>
    /// The same question for a sentence encoder (all-MiniLM-L6-v2, scripts/fetch-minilm.sh), whose loss is the embedding
    /// distillation loss mean ‖e_θ − e_dense‖² (zero gradient at the dense weights, so ½δᵀĤδ is the whole prediction):
    /// K-FAC on bench/minilm.sh's curvature batch (32 valid sentences, every 90th) and whitening (64, every 40th); for every
    /// heuristic and geo at each ratio, the predicted ½δᵀĤδ against the distillation loss measured on the first
    /// <paramref name="testSentences"/> test sentences after compressing with the plan (no refit).
    /// </summary>
    public static int RunSentences(string jsonOut, string modelDir, int testSentences)
    {
        var total = Stopwatch.StartNew();
        var dense = ModelLoader.Load(modelDir);
        var config = (ISentenceEncoderConfig)dense.Config;
        var tokenizer = WordPieceTokenizer.Load(modelDir, config.MaxPositions);
        var valid = SentenceSet.FromFile("assets/data/sentences/valid.txt", tokenizer, config);
        var test = SentenceSet.FromFile("assets/data/sentences/test.txt", tokenizer, config, testSentences);
        var calibration = CalibrationSet.FromSentences(valid, valid.Select(64, 40));
        using var grams = ActivationGrams.Collect(dense, calibration, dense.Sites);
        using var batch = EmbeddingDistillationBatch.FromSentences(dense, valid, valid.Select(32, 90));
        using var held = EmbeddingDistillationBatch.FromSentences(dense, test, Enumerable.Range(0, test.Count).ToArray());
        var sw = Stopwatch.StartNew();
        var curvature = BlockCurvatureModel.Collect(dense, batch, grams, new PlannerOptions { Ratio = 0.3, Curvature = CurvatureMethod.Kfac }, null);
        double curvatureSeconds = sw.Elapsed.TotalSeconds;
        Log($"K-FAC curvature {curvatureSeconds:F0} s");
        var originals = dense.Sites.ToDictionary(s => s.Name, s => dense.GetProjection(s).WeightInOut().detach().to_type(ScalarType.Float64).clone());

        var rows = new List<SentenceRow>();
        foreach (double ratio in new[] { 0.2, 0.3, 0.4, 0.5 })
        {
            var plans = new List<(string Label, SharingPlan Plan, ICoefficientSolver? Solver, PlannerResult? Planner)>();
            foreach (var m in Heuristics)
                plans.Add(($"{m}-{ratio}", Baselines.Create(m, dense, ratio, new BaselineOptions { Seed = 1 }, grams), null, null));
            var r = GeoPlanner.Plan(dense, grams, batch, new PlannerOptions { Ratio = ratio, Curvature = CurvatureMethod.Kfac }, null, curvature);
            plans.Add(($"geo-{ratio}", r.Plan, new CurvatureAlignedSolver(r.Costs), r));
            foreach (var (label, plan, solver, planner) in plans)
            {
                var model = ModelLoader.Load(modelDir);
                PlanCompressor.Apply(model, plan, grams, new CompressionOptions { Coefficients = solver });
                double q = QuadraticScore(model, originals, curvature);
                double measured;
                using (torch.no_grad())
                using (var scope = torch.NewDisposeScope())
                    measured = held.Loss(held.Output(model)).item<float>();
                rows.Add(new SentenceRow(label, ratio, measured, q, planner?.Search.Objective));
                Log($"{label}: measured {measured:E4}, ½δᵀĤδ (K-FAC) {q:E4}");
                model.Dispose();
                planner?.Dispose();
            }
        }
        foreach (var c in curvature.Values) c.Dispose();
        var byRatio = rows.GroupBy(r => r.Ratio).Select(g => new SentenceRatio(g.Key, g.Count(),
            Spearman(g.Select(r => r.PredictedQuadratic).ToArray(), g.Select(r => r.Measured).ToArray()),
            g.Average(r => r.Measured / r.PredictedQuadratic))).ToList();
        double overall = Spearman(rows.Select(r => r.PredictedQuadratic).ToArray(), rows.Select(r => r.Measured).ToArray());
        Log($"Spearman over {rows.Count} plans: {overall:F3}; by ratio: {string.Join(", ", byRatio.Select(b => $"{b.Ratio}: {b.Spearman:F3}"))}");
        JsonOutput.Write(jsonOut, new SentenceFidelity("fidelity-sentences", modelDir, batch.Description, calibration.Description,
            $"first {test.Count} sentences of test.txt", rows.Count, overall, byRatio, rows, curvatureSeconds, torch.get_num_threads(), total.Elapsed.TotalSeconds));
        return 0;
    }

    record SentenceRow(string Plan, double Ratio, double Measured, double PredictedQuadratic, double? PlannerObjective);
    record SentenceRatio(double Ratio, int Plans, double Spearman, double MeanMeasuredOverPredicted);
    record SentenceFidelity(string Benchmark, string Model, string CurvatureBatch, string Calibration, string LossSentences, int Plans,
        double Spearman, IReadOnlyList<SentenceRatio> ByRatio, IReadOnlyList<SentenceRow> Rows, double CurvatureSeconds, int Threads, double WallSeconds);

    record Row(string Plan, double Ratio, double Measured, double PredictedExact, double PredictedKfac, double QuadraticExact, double QuadraticKfac);

    /// <summary>The part of fidelity.json that the per-ratio table reads: the rows that <see cref="Run"/> wrote.</summary>
    record RowsOfRun(IReadOnlyList<Row> Rows);

    /// <summary>
    /// fidelity.md's per-ratio table from fidelity.json: Spearman ρ of ½δᵀĤδ (exact, K-FAC) against the measured ΔL
    /// within each ratio, by the same <see cref="Spearman"/> (ties get their average rank) as the overall figures.
    /// </summary>
    public static int ByRatio(string json)
    {
        var rows = JsonOutput.Read<RowsOfRun>(json).Rows;
        foreach (var ratio in rows.Select(r => r.Ratio).Distinct().Order())
        {
            var rs = rows.Where(r => r.Ratio == ratio).ToList();
            var measured = rs.Select(r => r.Measured).ToArray();
            string F(double v) => v.ToString("0.000", System.Globalization.CultureInfo.InvariantCulture);
            Console.WriteLine($"| {ratio.ToString(System.Globalization.CultureInfo.InvariantCulture)} | {rs.Count} | " +
                $"{F(Spearman(rs.Select(r => r.QuadraticExact).ToArray(), measured))} | {F(Spearman(rs.Select(r => r.QuadraticKfac).ToArray(), measured))} |");
        }
        return 0;
    }

    static string Name(CurvatureMethod m) => m == CurvatureMethod.Exact ? "exact" : "kfac";

    /// <summary>Every heuristic of <see cref="Baselines"/> (the dense "none" left out), in its order.</summary>
    static readonly string[] Heuristics = Baselines.Methods.Where(m => m != "none").ToArray();

    /// <summary>The planner's score of a compressed model: Σ over its sites of ½δᵀĤδ, δ its weights less the dense ones.</summary>
    static double QuadraticScore(PretrainedModel model, Dictionary<string, Tensor> originals, IReadOnlyDictionary<string, BlockCurvatureModel> curvature)
    {
        double q = 0;
        foreach (var s in model.Sites)
        {
            using var delta = model.GetProjection(s).WeightInOut().detach().to_type(ScalarType.Float64).sub(originals[s.Name]);
            q += 0.5 * curvature[s.Name].Quadratic(delta);
        }
        return q;
    }

    static void Log(string s) => Console.Error.WriteLine($"[fidelity] {s}");

    static double MeanLoss(PretrainedModel model, TokenWindows windows, IReadOnlyList<int> which)
    {
        var s = Evaluator.Perplexity(model, windows, null, null, which.ToArray());
        return s.MeanNll;
    }

    /// <summary>δᵀHδ with H the exact Hessian over all projection weights together, against its block-diagonal part.</summary>
    static object CrossLayer(PretrainedModel model, LossBatch batch, Dictionary<string, Dictionary<string, Tensor>> deltas)
    {
        var sites = model.Sites.ToList();
        var weights = sites.Select(s => ((DenseLinear)model.GetProjection(s)).Weight).ToList();
        using var h = new HessianOperator(() => batch.Loss(model), weights.Cast<Tensor>().ToList());
        var result = new List<object>();
        foreach (var (label, delta) in deltas)
        {
            var sw = Stopwatch.StartNew();
            // δ in the weights' storage layout, concatenated like the operator's flat vector.
            var parts = sites.Select(s => ((DenseLinear)model.GetProjection(s)).Layout == WeightLayout.InOut ? delta[s.Name] : delta[s.Name].t())
                .Select(p => p.contiguous().reshape(-1).to_type(ScalarType.Float32)).ToList();
            var flat = torch.cat(parts);
            double full = h.Apply(flat).to_type(ScalarType.Float64).mul(flat.to_type(ScalarType.Float64)).sum().item<double>();
            double diagonal = parts.Select((p, b) => h.ApplyBlock(b, p).to_type(ScalarType.Float64).mul(p.to_type(ScalarType.Float64)).sum().item<double>()).Sum();
            Log($"{label}: δᵀHδ {full:G5}, block-diagonal {diagonal:G5}, cross-layer {full - diagonal:G5} ({sw.Elapsed.TotalSeconds:F0} s)");
            result.Add(new { plan = label, full_quadratic = full, block_diagonal = diagonal, cross_layer = full - diagonal, cross_layer_share = (full - diagonal) / full });
        }
        return result;
    }

    /// <summary>Spearman's ρ: Pearson correlation of the ranks, tied values sharing their average rank.</summary>
    public static double Spearman(double[] x, double[] y)
    {
        double[] Ranks(double[] v)
        {
            var order = v.Select((value, i) => (value, i)).OrderBy(p => p.value).ToArray();
            var r = new double[v.Length];
            for (int i = 0; i < order.Length;)
            {
                int j = i;
                while (j + 1 < order.Length && order[j + 1].value == order[i].value) j++;
                for (int k = i; k <= j; k++) r[order[k].i] = (i + j) / 2.0 + 1;
                i = j + 1;
            }
            return r;
        }
        var rx = Ranks(x);
        var ry = Ranks(y);
        double mx = rx.Average(), my = ry.Average();
        double cov = rx.Zip(ry, (a, b) => (a - mx) * (b - my)).Sum();
        return cov / Math.Sqrt(rx.Sum(a => (a - mx) * (a - mx)) * ry.Sum(b => (b - my) * (b - my)));
    }
}
