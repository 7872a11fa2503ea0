using System.Diagnostics;
using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare compress`: share parameters across layers by a method (or a plan file) at a parameter budget.</summary>
public sealed class CompressCommand : ICommand
{
    public CommandSpec Spec { get; } = new("compress", "share parameters across layers at a compression ratio, save and evaluate the smaller model",
    [
        CommonOptions.Model,
        CalibrationOptions.Data,
        CalibrationOptions.FashionMnist,
        new("--ratio", "R", "fraction of the shareable matrices' parameters to remove, in (0, 1)"),
        new("--method", "NAME", "geo (Geo-Sharing: curvature-chosen coloring, ranks and coefficients), or a heuristic: none, svd, adjacent, all, sequence, cycle, cycle-rev, sandwich, similarity, random", "adjacent"),
        new("--plan", "FILE", "use this plan (geoshare_plan JSON) instead of a method"),
        new("--mode", "basis|tie", "shared low-rank basis with per-layer coefficients, or one tied matrix per group", "basis"),
        new("--group-size", "N", "layers per group for adjacent, similarity and random", "2"),
        new("--unique", "M", "unique blocks for sequence, cycle and cycle-rev", DefaultNote: "layers / 3"),
        new("--share", "TYPES", "matrix types whose layers share (comma-separated; 'all' or 'none'); the rest are compressed per layer", DefaultNote: "Basis Sharing's choice per architecture"),
        .. PlannerCliOptions.Specs,
        new("--refit", "auto|on|off", "least-squares refit of the coefficients on inputs of the compressed model (auto: from ratio 0.4, as Basis Sharing)", "auto"),
        new("--calib-windows", "N", "calibration windows (images) for whitening", "64"),
        new("--calib-stride", "S", "calibration stride: windows 0, S, 2S, …", "16"),
        new("--out", "DIR", "write the compressed model here (safetensors + plan + config + tokenizer)"),
        new("--force", null, "replace a non-empty --out folder"),
        new("--eval", "FILE", "evaluate the compressed language model on this text file (for the ViT: --eval t10k)"),
        new("--eval-ood", "FILE", "also evaluate the compressed language model on this second, out-of-domain text (JSON ood_evaluation)"),
        new("--eval-limit", "N", "evaluate only the first N windows (images) of --eval and of --eval-ood"),
        new("--dtype", "TYPE", "element type to compute in: float32, float64 or bfloat16", "float32"),
        new("--save-dtype", "TYPE", "element type of the --out checkpoint: float32, float16 or bfloat16", DefaultNote: "the input checkpoint's (F16 stays F16, BF16 stays BF16)"),
        CommonOptions.Streaming,
        CommonOptions.Seed,
        CommonOptions.Threads,
        CommonOptions.Json,
    ],
    [
        "geoshare compress --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --ratio 0.3 --method geo --eval assets/data/corpus/test.txt --json gpt2-geo-30.json",
        "geoshare compress --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --ratio 0.3 --method adjacent --out gpt2-adjacent-30 --eval assets/data/corpus/test.txt",
        "geoshare compress --model assets/models/llama-kjv-brown --data assets/data/corpus/valid.txt --ratio 0.2 --method svd --json llama-svd-20.json",
        "geoshare compress --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --plan my-plan.json --out gpt2-custom",
        "geoshare compress --model assets/models/vit-fashion-mnist --fashion-mnist /usr/share/datasets/fashion-mnist --ratio 0.4 --method all --eval t10k",
        "geoshare compress --model bench/fixtures/llama-1b --data assets/data/corpus/valid.txt --ratio 0.3 --method adjacent --streaming on --calib-windows 8 --out llama-1b-adjacent-30",
    ]);

    public int Execute(ParsedArgs a)
    {
        CommonOptions.ApplyThreads(a);
        var total = Stopwatch.StartNew();
        string modelDir = a.Required("--model");
        string? planPath = a.String("--plan"), outDir = a.String("--out"), evalData = a.String("--eval");
        CommonOptions.CheckOutputs(a, ["--model", "--data", "--fashion-mnist", "--plan", "--eval", "--eval-ood"], ("--out", OutputKind.Folder));
        if (a.Flag("--force") && outDir is null) throw new UsageException("--force replaces an --out folder: give --out DIR");
        using var outLock = outDir is null ? null : OutputLock.Acquire(outDir, $"--out {outDir}");
        if (outDir is not null) CheckOutFolder(outDir, a.Flag("--force"));
        if (planPath is null && !a.Has("--ratio")) throw new UsageException("give --ratio R (or --plan FILE)");
        ValidateBeforeLoading(a, modelDir);
        // A plan with curvature-aligned coefficients records what they need; its model is rebuilt from that.
        var loadedPlan = planPath is null ? null : SharingPlan.Load(planPath);
        var recipe = loadedPlan?.Coefficients;
        var dtype = recipe is null ? CalibrationOptions.DType(a, allowBFloat16: true) : PlannerCliOptions.RecordedDType(a, recipe, planPath!);
        var saveDType = CalibrationOptions.SaveDType(a);
        if (saveDType is not null && outDir is null) throw new UsageException("--save-dtype: give --out DIR (it sets the dtype of the saved checkpoint)");

        if (CommonOptions.UseStreaming(a, modelDir, dtype, StreamingRefusal(a, loadedPlan, outDir)))
            return ExecuteStreaming(a, modelDir, loadedPlan, dtype, saveDType, total);

        ConsoleProgress.Status($"loading {modelDir}");
        var model = ModelFolder.Load(modelDir, dtype);
        if (model.Sites.Any(s => model.GetProjection(s) is not DenseLinear))
            throw new UsageException($"{modelDir} is already compressed; compress the original model");
        var progress = new ConsoleProgress();
        var (calibration, evaluate, evaluateOod) = Data(model, modelDir, a);

        string method = planPath is null ? a.Required("--method") : "plan";
        loadedPlan?.Validate(model, planPath!);
        using var recordedBatch = recipe is null ? null : PlannerCliOptions.RecordedCurvatureBatch(a, model, modelDir, recipe, planPath!);
        var plannerOptions = method == "geo" ? PlannerCliOptions.Parse(a, model, a.Ratio("--ratio")) : null;
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites, progress);
        SharingPlan plan;
        PlannerResult? planner = null;
        AlignedCoefficientSolver? recomputed = null;
        if (loadedPlan is not null)
        {
            plan = loadedPlan;
            if (recordedBatch is not null)
            {
                recomputed = GeoPlanner.AlignedCoefficients(model, plan, grams, recordedBatch, progress);
                progress.EndLine();
            }
        }
        else
        {
            double ratio = a.Ratio("--ratio");
            var options = new BaselineOptions
            {
                GroupSize = a.Int("--group-size", min: 1),
                UniqueBlocks = a.Has("--unique") ? a.Int("--unique", min: 1) : null,
                SharedTypes = ShareableTypes.Resolve(model, a.List("--share")),
                Mode = a.Choice("--mode", "basis", "tie") == "tie" ? SharingMode.Tie : SharingMode.Basis,
                Seed = a.Int("--seed", min: 0),
            };
            if (method == "geo")
            {
                planner = PlannerCliOptions.Run(model, modelDir, a, plannerOptions!, progress, grams);
                progress.EndLine();
                PlannerCliOptions.PrintSummary(model, planner);
                plan = planner.Plan;
            }
            else plan = Baselines.Create(method, model, ratio, options, grams);
        }
        ICoefficientSolver? coefficients = planner is not null ? new CurvatureAlignedSolver(planner.Costs) : recomputed;
        var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions { Refit = RefitOption(a), Coefficients = coefficients }, calibration, progress);
        progress.EndLine();

        PrintReport(plan, report);

        CompressedModelEvaluation? evalResult = evaluate is null ? null : evaluate(model, progress);
        progress.EndLine();
        CompressedModelEvaluation? oodResult = evaluateOod is null ? null : evaluateOod(model, progress);
        progress.EndLine();
        if (outDir is not null)
        {
            var saved = new { plan.Method, plan.Ratio, report, calibration = calibration.Description };
            var stored = saveDType ?? CompressedCheckpoint.DefaultSaveDType(model);
            CompressedCheckpoint.Save(model, plan, modelDir, outDir, saved, stored, replace: a.Flag("--force"));
            ConsoleProgress.Status($"wrote {outDir} ({new FileInfo(Path.Combine(outDir, Checkpoint.SingleFile)).Length:N0} bytes of weights, {CalibrationOptions.Name(stored)})");
        }
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, new CompressOutput
            {
                Model = modelDir, ModelType = model.Config.ModelType, Method = plan.Method, Ratio = plan.Ratio,
                Calibration = calibration.Description, Refit = report.Refitted, Report = report, AchievedRatio = report.Ratio,
                ParameterBytes = model.ParameterBytes(), Evaluation = evalResult, OodEvaluation = oodResult, OutDir = outDir,
                SaveDtype = outDir is null ? null : CalibrationOptions.Name(saveDType ?? CompressedCheckpoint.DefaultSaveDType(model)),
                CheckpointBytes = outDir is null ? null : new FileInfo(Path.Combine(outDir, Checkpoint.SingleFile)).Length, Plan = plan,
                Planner = planner is null ? null : PlannerCliOptions.Summary(planner),
                Threads = torch.get_num_threads(), Allocator = NativeAllocator.Name, WallSeconds = total.Elapsed.TotalSeconds,
            });
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        planner?.Dispose();
        recomputed?.Dispose();
        return 0;
    }

    /// <summary>--refit: on, off, or null (auto: from ratio <see cref="CompressionOptions.AutoRefitRatio"/>).</summary>
    private static bool? RefitOption(ParsedArgs a) => a.Choice("--refit", "auto", "on", "off") switch
    {
        "on" => true,
        "off" => false,
        _ => null,
    };

    /// <summary>Why this run cannot go layer by layer (null: it can).</summary>
    private static string? StreamingRefusal(ParsedArgs a, SharingPlan? loadedPlan, string? outDir)
    {
        if (CompressedCheckpoint.IsCompressed(a.Required("--model"))) return null; // refused below as already compressed
        bool geo = loadedPlan?.Coefficients is not null || a.String("--method") == "geo";
        var curvature = loadedPlan?.Coefficients?.Curvature
            ?? (a.Has("--curvature") && a.Choice("--curvature", "exact", "kfac") == "exact" ? CurvatureMethod.Exact : CurvatureMethod.Kfac);
        if (geo && curvature == CurvatureMethod.Exact)
            return "exact curvature needs the whole model in memory (Hessian-vector products); the layer-wise path has K-FAC (--curvature kfac, or --streaming off)";
        if (outDir is null) return "the layer-wise path writes the compressed model as it goes: give --out DIR";
        return null;
    }

    /// <summary>
    /// compress one layer at a time: grams collected layer by layer and spilled beside --out, groups compressed from the
    /// checkpoint straight into the output file, the result evaluated (with --eval) from the written folder, layer by layer.
    /// </summary>
    private int ExecuteStreaming(ParsedArgs a, string modelDir, SharingPlan? loadedPlan, torch.ScalarType dtype, torch.ScalarType? saveDType, Stopwatch total)
    {
        string outDir = a.Required("--out");
        if (CompressedCheckpoint.IsCompressed(modelDir)) throw new UsageException($"{modelDir} is already compressed; compress the original model");
        ConsoleProgress.Status($"opening {modelDir} layer by layer");
        using var stream = LayerStream.OpenDense(modelDir, dtype);
        var shell = stream.Shell;
        var progress = new ConsoleProgress();
        var calibration = CalibrationOptions.CalibrationSet(shell, modelDir, a);
        string method = loadedPlan is null ? a.Required("--method") : "plan";
        loadedPlan?.Validate(shell, a.String("--plan")!);
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(outDir));
        string gramsDir = PartialOutputs.StagingName(full, "grams"), spillPath = PartialOutputs.StagingName(full, "spill"),
            refitPath = PartialOutputs.StagingName(full, "refit");
        PartialOutputs.Register(gramsDir);
        PartialOutputs.Register(spillPath);
        PartialOutputs.Register(refitPath);
        try
        {
            var options = new BaselineOptions
            {
                GroupSize = a.Int("--group-size", min: 1),
                UniqueBlocks = a.Has("--unique") ? a.Int("--unique", min: 1) : null,
                SharedTypes = ShareableTypes.Resolve(shell, a.List("--share")),
                Mode = a.Choice("--mode", "basis", "tie") == "tie" ? SharingMode.Tie : SharingMode.Basis,
                Seed = a.Int("--seed", min: 0),
            };
            double ratio = loadedPlan?.Ratio ?? a.Ratio("--ratio");
            // Every compressed type's sites; similarity's coloring compares the shared types' grams before the plan exists.
            // Geo-Sharing's planner (and a plan's aligned coefficients) reads every site's gram.
            bool aligned = method == "geo" || loadedPlan?.Coefficients is not null;
            var sites = aligned ? shell.Sites : loadedPlan is not null ? StreamingCompressor.SitesNeeded(shell, loadedPlan)
                : method == "none" ? [] : shell.Sites;
            using var recordedBatch = loadedPlan?.Coefficients is { } recipe ? PlannerCliOptions.RecordedCurvatureBatch(a, shell, modelDir, recipe, a.String("--plan")!) : null;
            var plannerOptions = method == "geo" ? PlannerCliOptions.Parse(a, shell, ratio) : null;
            using var grams = SpilledGrams.Collect(stream, calibration, sites, gramsDir, progress);
            progress.EndLine();
            SharingPlan plan;
            PlannerResult? planner = null;
            AlignedCoefficientSolver? recomputed = null;
            if (loadedPlan is not null)
            {
                plan = loadedPlan;
                if (recordedBatch is not null)
                {
                    recomputed = GeoPlanner.AlignedCoefficients(PlanningInputs.Streamed(stream, grams), plan, recordedBatch, progress);
                    progress.EndLine();
                }
            }
            else if (method == "geo")
            {
                planner = PlannerCliOptions.Run(shell, modelDir, a, plannerOptions!, progress, grams, stream);
                PlannerCliOptions.PrintSummary(shell, planner);
                plan = planner.Plan;
            }
            else if (method == "similarity")
            {
                using var loaded = grams.Load(shell.Sites.Where(s => options.SharedTypes.Contains(s.Type)).Select(s => s.Name));
                plan = Baselines.Create(method, shell, ratio, options, loaded);
            }
            else plan = Baselines.Create(method, shell, ratio, options);
            var stored = saveDType ?? CompressedCheckpoint.DefaultSaveDType(shell);
            using var spill = new SafetensorsSpill(spillPath);
            ICoefficientSolver? coefficients = planner is not null ? new CurvatureAlignedSolver(planner.Costs) : recomputed;
            var report = StreamingCompressor.Compress(stream, plan, grams, new CompressionOptions { Refit = RefitOption(a), Coefficients = coefficients }, spill, stored,
                progress, calibration, refitPath);
            progress.EndLine();
            PrintReport(plan, report);
            var saved = new { plan.Method, plan.Ratio, report, calibration = calibration.Description };
            CompressedCheckpoint.Save(spill, plan, modelDir, outDir, saved, replace: a.Flag("--force"));
            ConsoleProgress.Status($"wrote {outDir} ({new FileInfo(Path.Combine(outDir, Checkpoint.SingleFile)).Length:N0} bytes of weights, {CalibrationOptions.Name(stored)})");

            CompressedModelEvaluation? EvaluateWritten(string? evalData)
            {
                if (evalData is null) return null;
                int? limit = a.Has("--eval-limit") ? a.Int("--eval-limit", min: 1) : null;
                var test = TokenWindows.FromFile(evalData, ByteLevelBpeTokenizer.Load(modelDir), 256);
                using var compressed = CompressedCheckpoint.OpenStream(outDir, dtype);
                var s = Evaluator.Perplexity(compressed, test, null, progress, limit is int l ? Enumerable.Range(0, Math.Min(l, test.Count)).ToArray() : null);
                progress.EndLine();
                return PerplexityEvaluation(evalData, s, ", layer by layer");
            }
            var evalResult = EvaluateWritten(a.String("--eval"));
            var oodResult = EvaluateWritten(a.String("--eval-ood"));
            if (a.String("--json") is { } jsonPath)
            {
                JsonOutput.Write(jsonPath, new CompressOutput
                {
                    Model = modelDir, ModelType = shell.Config.ModelType, Method = plan.Method, Ratio = plan.Ratio,
                    Calibration = calibration.Description, Refit = report.Refitted, Report = report, AchievedRatio = report.Ratio,
                    ParameterBytes = report.ModelBytesAfter, Evaluation = evalResult, OodEvaluation = oodResult, OutDir = outDir, SaveDtype = CalibrationOptions.Name(stored),
                    CheckpointBytes = new FileInfo(Path.Combine(outDir, Checkpoint.SingleFile)).Length, Plan = plan,
                    Planner = planner is null ? null : PlannerCliOptions.Summary(planner),
                    Threads = torch.get_num_threads(), Allocator = NativeAllocator.Name, WallSeconds = total.Elapsed.TotalSeconds, Streaming = true,
                    PeakResidentBytes = ResidentMemory.PeakBytes,
                });
                ConsoleProgress.Status($"wrote {jsonPath}");
            }
            planner?.Dispose();
            recomputed?.Dispose();
        }
        finally
        {
            PartialOutputs.Forget(gramsDir); // removed by SpilledGrams (or by Collect when it fails)
            PartialOutputs.Forget(spillPath);
        }
        return 0;
    }

    private static void PrintReport(SharingPlan plan, CompressionReport report)
    {
        var table = new TextTable("type", "mode", "colors", "ranks", "parameters before", "after", "kept");
        foreach (var t in report.Types)
            table.Add(t.Type, t.Mode.ToString().ToLowerInvariant(), t.Colors, t.Ranks is null ? "" : RankSummary(t.Ranks),
                t.ParametersBefore, t.ParametersAfter, CommonOptions.Fmt((double)t.ParametersAfter / t.ParametersBefore, "0.000"));
        table.Add("all matrices", "", "", "", report.MatrixParametersBefore, report.MatrixParametersAfter, CommonOptions.Fmt(1 - report.Ratio, "0.000"));
        table.Add("whole model", "", "", "", report.ModelParametersBefore, report.ModelParametersAfter, CommonOptions.Fmt((double)report.ModelParametersAfter / report.ModelParametersBefore, "0.000"));
        Console.WriteLine($"{plan.Method} at ratio {CommonOptions.Fmt(plan.Ratio ?? 0, "0.00")}: removed {CommonOptions.Fmt(report.Ratio * 100, "0.0")}% of the shareable matrices' parameters{(report.Refitted ? " (coefficients refitted)" : "")}");
        Console.WriteLine(table);
    }

    /// <summary>Methods whose colorings take --group-size, and those that take --unique.</summary>
    private static readonly string[] GroupSizeMethods = ["adjacent", "similarity", "random"], UniqueMethods = ["sequence", "cycle", "cycle-rev"];

    /// <summary>
    /// Every option checked before the model is loaded: values, ranges (the layer count from config.json), and
    /// options that conflict or would be ignored (with --plan, or with a method that does not use them).
    /// </summary>
    private static void ValidateBeforeLoading(ParsedArgs a, string modelDir)
    {
        string? planPath = a.String("--plan");
        if (planPath is not null)
        {
            foreach (var o in new[] { "--ratio", "--method", "--mode", "--share", "--group-size", "--unique" })
                a.RefuseUnless(false, o, $"conflicts with --plan {planPath} (the plan fixes the coloring, ranks, mode and ratio); leave {o} out");
            // The search's own options: the plan's search has run.
            foreach (var o in new[] { "--max-group", "--contiguous", "--private", "--search", "--costing", "--screen-partners", "--prescreen", "--cost-singles", "--kept-offsets" })
                a.RefuseUnless(false, o, $"shapes the planner's search, which --plan {planPath} has already made; leave {o} out");
        }
        else
        {
            string method = a.Required("--method");
            if (method != "geo" && !Baselines.Methods.Contains(method))
                throw new UsageException($"--method: unknown method '{BoundedFile.Quote(method)}' (methods: geo, {string.Join(", ", Baselines.Methods)})");
            a.Ratio("--ratio");
            string mode = a.Choice("--mode", "basis", "tie");
            if (method == "geo" && mode == "tie")
                throw new UsageException("--mode tie: geo shares low-rank bases (its coefficients are what it aligns); use --mode basis");
            a.RefuseUnless(GroupSizeMethods.Contains(method), "--group-size", $"applies to --method {string.Join(", ", GroupSizeMethods)}, not {method}");
            a.RefuseUnless(UniqueMethods.Contains(method), "--unique", $"applies to --method {string.Join(", ", UniqueMethods)}, not {method}");
            a.RefuseUnless(method != "none", "--share", "does not apply to --method none");
            foreach (var o in PlannerCliOptions.Specs.Select(s => s.Name))
                a.RefuseUnless(method == "geo", o, $"is a Geo-Sharing option: it applies to --method geo (or a --plan it made), not {method}");
        }
        a.Choice("--refit", "auto", "on", "off");
        a.Int("--calib-windows", min: 1);
        a.Int("--calib-stride", min: 1);
        a.Int("--seed", min: 0);
        if (a.Has("--eval-limit")) a.Int("--eval-limit", min: 1);
        a.RefuseUnless(a.Has("--eval") || a.Has("--eval-ood"), "--eval-limit", "limits --eval and --eval-ood: give --eval FILE or --eval-ood FILE too");
        if (planPath is null) CalibrationOptions.DType(a, allowBFloat16: true);
        CalibrationOptions.SaveDType(a);
        // The layer count, from config.json, bounds --group-size, --unique and the planner's layer options.
        int layers = GeoShare.Models.ModelConfig.Load(modelDir).NumLayers;
        if (a.Has("--group-size") && a.Int("--group-size", min: 1) is int g && g > layers)
            throw new UsageException($"--group-size: must be within 1..{layers} (the model has {layers} layers), got {g}");
        if (a.Has("--unique") && a.Int("--unique", min: 1) is int u && u > layers)
            throw new UsageException($"--unique: must be within 1..{layers} (the model has {layers} layers), got {u}");
        if (planPath is not null || a.String("--method") == "geo") PlannerCliOptions.ValidateBeforeLoading(a, layers);
    }

    /// <summary>
    /// An existing, non-empty --out is replaced only with --force and only when GeoShare wrote it (its own files and
    /// nothing else): --force never deletes a folder of the user's.
    /// </summary>
    private static void CheckOutFolder(string outDir, bool force)
    {
        PartialOutputs.RemoveStale(outDir); // staging folders of killed runs
        if (!Directory.Exists(outDir) || !Directory.EnumerateFileSystemEntries(outDir).Any()) return;
        if (!CompressedCheckpoint.IsReplaceable(outDir, out string why))
            throw new UsageException($"--out {outDir} exists and was not written by GeoShare ({why}); choose another folder (--force replaces only a GeoShare output folder)");
        if (!force) throw new UsageException($"--out {outDir} exists and holds a GeoShare compressed model (use --force to replace it)");
    }

    /// <summary>A language model's evaluation on one text: its line on the console and its JSON record.</summary>
    private static CompressedModelEvaluation PerplexityEvaluation(string file, LanguageModelScore s, string how)
    {
        Console.WriteLine($"{file}: perplexity {CommonOptions.Fmt(s.Perplexity)} (mean NLL {CommonOptions.Fmt(s.MeanNll, "0.000000")}, {s.PredictedTokens} tokens, {CommonOptions.Fmt(s.TokensPerSecond, "0")} tokens/s{how})");
        return new CompressedModelEvaluation { Data = file, Perplexity = s.Perplexity, MeanNll = s.MeanNll, PredictedTokens = s.PredictedTokens, TokensPerSecond = s.TokensPerSecond, WallSeconds = s.Seconds };
    }

    private static string RankSummary(int[] ranks) =>
        ranks.Distinct().Count() == 1 ? $"{ranks[0]} × {ranks.Length}" : string.Join(",", ranks);

    /// <summary>
    /// The calibration set, and (with --eval, --eval-ood) how to evaluate the compressed model and print its line; the
    /// second text is for language models only.
    /// </summary>
    private static (CalibrationSet, Func<PretrainedModel, ConsoleProgress, CompressedModelEvaluation>?, Func<PretrainedModel, ConsoleProgress, CompressedModelEvaluation>?) Data(
        PretrainedModel model, string modelDir, ParsedArgs a)
    {
        int? limit = a.Has("--eval-limit") ? a.Int("--eval-limit", min: 1) : null;
        string? evalData = a.String("--eval"), oodData = a.String("--eval-ood");
        if (model.Task == ModelTask.CausalLanguageModel)
        {
            var calibration = CalibrationOptions.CalibrationSet(model, modelDir, a);
            Func<PretrainedModel, ConsoleProgress, CompressedModelEvaluation>? Perplexity(string? file)
            {
                if (file is null) return null;
                var test = TokenWindows.FromFile(file, ByteLevelBpeTokenizer.Load(modelDir), 256);
                return (m, progress) =>
                {
                    var s = Evaluator.Perplexity(m, test, null, progress, limit is int l ? Enumerable.Range(0, Math.Min(l, test.Count)).ToArray() : null);
                    return PerplexityEvaluation(file, s, "");
                };
            }
            return (calibration, Perplexity(evalData), Perplexity(oodData));
        }
        if (oodData is not null)
            throw new UsageException($"--eval-ood: a second text applies to language models; {modelDir} is {(model.Task == ModelTask.SentenceEncoder ? "a sentence encoder" : "an image classifier")}");
        if (model.Task == ModelTask.SentenceEncoder)
        {
            var calibration = CalibrationOptions.CalibrationSet(model, modelDir, a);
            if (evalData is null) return (calibration, null, null);
            // The dense model's embeddings of the evaluation sentences, taken now, before the model is compressed in place.
            var sentences = CalibrationOptions.Sentences(model, modelDir, evalData, limit);
            var dense = Evaluator.Embeddings(model, sentences).DetachFromDisposeScope();
            return (calibration, (m, progress) =>
            {
                var s = Evaluator.CompareEmbeddings(m, dense, sentences, progress: progress);
                dense.Dispose();
                Console.WriteLine($"{evalData}: mean cosine {CommonOptions.Fmt(s.MeanCosine, "0.000000")}, min {CommonOptions.Fmt(s.MinCosine, "0.000000")}, 10-NN agreement {CommonOptions.Fmt(s.Knn10Agreement)} against the dense model ({s.Sentences} sentences, {CommonOptions.Fmt(s.SentencesPerSecond, "0.0")} sentences/s)");
                return new CompressedModelEvaluation { Data = evalData, MeanNll = 2 * (1 - s.MeanCosine), MeanCosine = s.MeanCosine, MinCosine = s.MinCosine, Knn10Agreement = s.Knn10Agreement, Sentences = s.Sentences, WallSeconds = s.Seconds };
            }, null);
        }
        var calib = CalibrationOptions.CalibrationSet(model, modelDir, a);
        if (evalData is null) return (calib, null, null);
        string dir = a.Required("--fashion-mnist");
        var pre = ImagePreprocessor.Load(modelDir);
        if (evalData != "t10k") throw new UsageException("--eval for the ViT: t10k (the Fashion-MNIST test split)");
        var testImages = ImageDataset.LoadFashionMnist(dir, "t10k");
        return (calib, (m, progress) =>
        {
            var s = Evaluator.Accuracy(m, testImages, pre, 50, progress, limit is int l ? Enumerable.Range(0, Math.Min(l, testImages.Count)).ToArray() : null);
            Console.WriteLine($"t10k: accuracy {CommonOptions.Fmt(s.Accuracy)} ({s.Correct}/{s.Images}, {CommonOptions.Fmt(s.ImagesPerSecond, "0")} images/s)");
            return new CompressedModelEvaluation { Data = "t10k", Accuracy = s.Accuracy, Images = s.Images, MeanNll = s.MeanNll, ImagesPerSecond = s.ImagesPerSecond, WallSeconds = s.Seconds };
        }, null);
    }
}
