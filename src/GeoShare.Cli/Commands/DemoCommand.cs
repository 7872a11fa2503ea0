using System.Diagnostics;
using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Reporting;
using GeoShare.Sharing;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare demo`: dense vs a sharing heuristic vs Geo-Sharing at one ratio on a bundled language model.</summary>
public sealed class DemoCommand : ICommand
{
    public CommandSpec Spec { get; } = new("demo", "plan with Geo-Sharing and a baseline at one ratio, compress, evaluate, and compare with the dense model",
    [
        new("--model", "DIR", "language model folder", "assets/models/gpt2-kjv-brown"),
        new("--data", "FILE", "calibration text (windows 0, 16, …)", "assets/data/corpus/valid.txt"),
        new("--test", "FILE", "evaluation text", "assets/data/corpus/test.txt"),
        new("--ratio", "R", "fraction of the shareable matrices' parameters to remove", "0.3"),
        new("--baseline", "NAME", "the heuristic to compare with (adjacent: Basis Sharing)", "adjacent"),
        new("--curvature", "exact|kfac", "Geo-Sharing's block curvature", "kfac"),
        new("--eval-limit", "N", "evaluate only the first N test windows", DefaultNote: "all"),
        new("--plots", "DIR", "folder for the pictures", "geoshare-plots/demo"),
        CommonOptions.Threads,
        CommonOptions.Json,
    ],
    [
        "geoshare demo",
        "geoshare demo --ratio 0.5 --baseline svd --json demo.json",
        "geoshare demo --model assets/models/llama-kjv-brown --ratio 0.3",
    ]) { ParameterOptions = new Dictionary<string, string> { ["method"] = "--baseline" } };

    public int Execute(ParsedArgs a)
    {
        CommonOptions.ApplyThreads(a);
        var total = Stopwatch.StartNew();
        string modelDir = a.Required("--model"), data = a.Required("--data"), testPath = a.Required("--test");
        CommonOptions.CheckOutputs(a, ["--model", "--data", "--test"]);
        double ratio = a.Ratio("--ratio");
        string baseline = a.Required("--baseline");
        if (!Baselines.Methods.Contains(baseline) || baseline == "none") throw new UsageException($"--baseline: unknown heuristic '{baseline}' (one of {string.Join(", ", Baselines.Methods.Where(m => m != "none"))})");
        var curvature = a.Choice("--curvature", "exact", "kfac") == "exact" ? CurvatureMethod.Exact : CurvatureMethod.Kfac;
        int? limit = a.OptionalInt("--eval-limit", min: 1);

        ConsoleProgress.Status($"loading {modelDir}");
        var dense = ModelFolder.Load(modelDir);
        if (dense.Task != ModelTask.CausalLanguageModel) throw new UsageException($"{modelDir}: the demo runs on a language model (compress the ViT with `geoshare compress`)");
        var tokenizer = ByteLevelBpeTokenizer.Load(modelDir);
        var windows = TokenWindows.FromFile(data, tokenizer, 256);
        var test = TokenWindows.FromFile(testPath, tokenizer, 256);
        Evaluator.CheckFits(dense, windows);
        Evaluator.CheckFits(dense, test);
        var selection = limit is int l ? Enumerable.Range(0, Math.Min(l, test.Count)).ToArray() : null;
        var progress = new ConsoleProgress();

        var rows = new List<(string Name, PretrainedModel Model, SharingPlan? Plan)>();
        var calibration = CalibrationSet.FromWindows(windows, windows.Select(64, 16));
        using var grams = ActivationGrams.Collect(dense, calibration, dense.Sites, progress);
        progress.EndLine();

        var basePlan = Baselines.Create(baseline, dense, ratio, new BaselineOptions(), grams);
        var baseModel = ModelFolder.Load(modelDir);
        PlanCompressor.Apply(baseModel, basePlan, grams, new CompressionOptions { Refit = ratio >= 0.4 }, calibration, progress);
        progress.EndLine();

        using var batch = LanguageModelBatch.FromWindows(windows, windows.Select(4, 1));
        using var planner = GeoPlanner.Plan(dense, grams, batch, new PlannerOptions { Ratio = ratio, Curvature = curvature }, progress);
        progress.EndLine();
        var geoModel = ModelFolder.Load(modelDir);
        PlanCompressor.Apply(geoModel, planner.Plan, grams, new CompressionOptions { Refit = ratio >= 0.4, Coefficients = new CurvatureAlignedSolver(planner.Costs) }, calibration, progress);
        progress.EndLine();
        rows.Add(("dense", dense, null));
        rows.Add((baseline, baseModel, basePlan));
        rows.Add(("geo", geoModel, planner.Plan));

        var results = new List<DemoModelResult>();
        var table = new TextTable("model", "parameters", "parameter bytes", "test perplexity", "tokens/s");
        foreach (var (name, model, _) in rows)
        {
            var s = Evaluator.Perplexity(model, test, null, progress, selection);
            progress.EndLine();
            table.Add(name, model.ParameterCount(), model.ParameterBytes(), CommonOptions.Fmt(s.Perplexity), CommonOptions.Fmt(s.TokensPerSecond, "0"));
            results.Add(new DemoModelResult(name, model.ParameterCount(), model.ParameterBytes(), s.Perplexity, s.MeanNll, s.Windows, s.TokensPerSecond));
        }
        string plots = a.Required("--plots");
        string label = Path.GetFileName(Path.TrimEndingDirectorySeparator(modelDir));
        var pictures = PlanPlots.Write(plots, dense, planner.Plan, planner.PairwiseCost, label).ToList();
        pictures.Add(PlanPlots.Coloring(Path.Combine(plots, $"coloring-{baseline}.png"), basePlan, $"{label}: {baseline} plan at ratio {ratio:0.00}"));

        Console.WriteLine($"{label} at ratio {CommonOptions.Fmt(ratio, "0.00")} ({(selection is null ? "whole" : $"first {selection.Length} windows of")} {testPath}):");
        Console.WriteLine(table);
        Console.WriteLine($"pictures: {string.Join(", ", pictures)}");
        Console.WriteLine($"{CommonOptions.Fmt(total.Elapsed.TotalSeconds, "0")} s in all");
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, new DemoOutput
            {
                Model = modelDir, Ratio = ratio, Baseline = baseline, Curvature = curvature.ToString().ToLowerInvariant(), Results = results,
                Planner = PlannerCliOptions.Summary(planner), GeoPlan = planner.Plan, BaselinePlan = basePlan, Pictures = pictures,
                Threads = torch.get_num_threads(), Allocator = NativeAllocator.Name, WallSeconds = total.Elapsed.TotalSeconds,
            });
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        return 0;
    }
}
