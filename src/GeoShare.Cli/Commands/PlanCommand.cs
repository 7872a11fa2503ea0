using System.Diagnostics;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Reporting;
using GeoShare.Sharing;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare plan`: Geo-Sharing's choice of which layers share and at what rank, under a parameter budget.</summary>
public sealed class PlanCommand : ICommand
{
    public CommandSpec Spec { get; } = new("plan", "choose which layers share (coloring) and the ranks, from the loss curvature, at a compression ratio",
    [
        CommonOptions.Model,
        CalibrationOptions.Data,
        CalibrationOptions.FashionMnist,
        new("--ratio", "R", "fraction of the shareable matrices' parameters to remove, in (0, 1)", Required: true),
        new("--share", "TYPES", "matrix types whose layers may share (comma-separated; 'all' or 'none')", DefaultNote: "Basis Sharing's choice per architecture"),
        .. PlannerCliOptions.Specs,
        new("--calib-windows", "N", "calibration windows (images) for the input second moments and whitening", "64"),
        new("--calib-stride", "S", "calibration stride: windows 0, S, 2S, …", "16"),
        new("--out", "FILE", "the plan (geoshare-plan JSON), for `compress --plan`", "geoshare-plan.json"),
        new("--plots", "DIR", "folder for the pictures (coloring, pairwise sharing costs)", "geoshare-plots/plan"),
        new("--cells", "DIR", "folder of costed groups (one file each, written atomically): read where present, written where computed"),
        new("--shard", "I/N", "with --cells: cost only share I of N (0 ≤ I < N) of the groups into DIR and stop; a run without --shard finishes from the cells"),
        CommonOptions.Streaming,
        CommonOptions.Seed,
        CommonOptions.Threads,
        CommonOptions.Json,
    ],
    [
        "geoshare plan --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --ratio 0.3",
        "geoshare plan --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --ratio 0.3 --curvature exact --out gpt2-geo-30.json --json plan-report.json",
        "geoshare plan --model assets/models/llama-kjv-brown --data assets/data/corpus/valid.txt --ratio 0.4 --contiguous --private 0,7 --max-group 3",
        "geoshare compress --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --plan gpt2-geo-30.json --eval assets/data/corpus/test.txt",
        "geoshare plan --model M --data D --ratio 0.3 --cells cells --shard 0/3   # and 1/3, 2/3 on other machines; then:",
        "geoshare plan --model M --data D --ratio 0.3 --cells cells --out plan.json",
        "geoshare plan --model bench/fixtures/gpt2-124m --data assets/data/corpus/valid.txt --ratio 0.3 --streaming on   # one layer resident; grams spilled beside --out",
    ]);

    public int Execute(ParsedArgs a)
    {
        CommonOptions.ApplyThreads(a);
        var total = Stopwatch.StartNew();
        string modelDir = a.Required("--model");
        CommonOptions.CheckOutputs(a, ["--model", "--data", "--fashion-mnist"], ("--out", OutputKind.File));
        double ratio = a.Ratio("--ratio");
        string planPath = a.Required("--out");
        a.Int("--calib-windows", min: 1);
        a.Int("--calib-stride", min: 1);
        a.Int("--seed", min: 0);
        a.NonEmptyList("--share", "Basis Sharing's choice");
        PlannerCliOptions.ValidateBeforeLoading(a, ModelConfig.Load(modelDir).NumLayers);
        if (a.Has("--shard"))
        {
            if (!a.Has("--cells")) throw new UsageException("--shard: needs --cells DIR (the shard writes its costs there)");
            if (a.Has("--json")) throw new UsageException("--shard: writes cells only, no --json (the run without --shard writes the plan and its JSON)");
            PlannerCliOptions.Shard(a);
        }

        // Layer by layer: K-FAC only (Hessian-vector products need the whole model's graph).
        string? refusal = a.Has("--curvature") && a.Choice("--curvature", "exact", "kfac") == "exact"
            ? "--curvature exact needs the whole model in memory (Hessian-vector products); the layer-wise path has K-FAC" : null;
        using var stream = CommonOptions.UseStreaming(a, modelDir, torch.ScalarType.Float32, refusal) ? LayerStream.OpenDense(modelDir) : null;
        ConsoleProgress.Status(stream is null ? $"loading {modelDir}" : $"opening {modelDir} layer by layer");
        using var loaded = stream is null ? ModelFolder.Load(modelDir) : null;
        var model = stream?.Shell ?? loaded!;
        if (model.Sites.Any(s => model.GetProjection(s) is not DenseLinear))
            throw new UsageException($"{modelDir} is already compressed; plan on the original model");
        var options = PlannerCliOptions.Parse(a, model, ratio);
        var progress = new ConsoleProgress();
        if (a.String("--cells") is { } cellsDir)
        {
            options = options with { Cells = new GroupCostCells(cellsDir, PlannerCliOptions.CellFingerprint(model, modelDir, a, options)) };
            if (a.Has("--shard"))
            {
                var s = PlannerCliOptions.RunShard(model, modelDir, a, options, progress, stream, spillNear: cellsDir);
                progress.EndLine();
                Console.WriteLine($"shard {s.Shard}/{s.Shards}: {s.Share} of {s.Groups} groups ({s.Costing.Method.ToString().ToLowerInvariant()} costing, {s.ScreenedGroups} screened) into {cellsDir}: " +
                    $"{s.Computed} costed here, {s.FromCells} already there; curvature {s.CurvatureSeconds:0} s, costs {s.CostSeconds:0} s");
                return 0;
            }
        }
        using var result = PlannerCliOptions.Run(model, modelDir, a, options, progress, stream: stream, spillNear: planPath);
        progress.EndLine();

        result.Plan.Save(planPath);
        var pictures = PlanPlots.Write(a.Required("--plots"), model, result.Plan, result.PairwiseCost, Path.GetFileName(Path.TrimEndingDirectorySeparator(modelDir)));
        PlannerCliOptions.PrintSummary(model, result);
        Console.WriteLine($"wrote {planPath}; pictures: {string.Join(", ", pictures)}");
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, new PlanOutput
            {
                Model = modelDir, ModelType = model.Config.ModelType, Ratio = ratio, Curvature = options.Curvature.ToString().ToLowerInvariant(),
                Options = new(options.TopK, options.MaxGroupSize, options.Contiguous, options.PrivateLayers.Order().ToArray(), options.SharedTypes, options.Search.ToString().ToLowerInvariant(), options.Trust, options.KeptOffsets),
                Planner = PlannerCliOptions.Summary(result), Plan = result.Plan, PlanFile = planPath, Pictures = pictures,
                Threads = torch.get_num_threads(), Allocator = NativeAllocator.Name, WallSeconds = total.Elapsed.TotalSeconds,
            });
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        return 0;
    }
}
