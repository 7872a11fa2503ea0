using System.Diagnostics;
using GeoShare.Curvature;
using GeoShare.Models;
using GeoShare.Sharing;
using GeoShare.Reporting;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare analyze`: per-block Hessian spectra, traces and densities on a calibration batch.</summary>
public sealed class AnalyzeCommand : ICommand
{
    public CommandSpec Spec { get; } = new("analyze", "curvature per block: top/bottom Hessian eigenvalues, trace, spectral density",
    [
        CommonOptions.Model,
        CalibrationOptions.Data,
        CalibrationOptions.FashionMnist,
        new("--windows", "N", "calibration windows (or images)", Required: true),
        new("--stride", "S", "take every S-th window (image) from --first", "1"),
        new("--first", "F", "index of the first window (image)", "0"),
        new("--params", "NAMES", "comma-separated blocks: parameter or module names, 'a+b' joins two into one block", DefaultNote: "every shareable weight matrix"),
        new("--top", "K", "largest eigenvalues per block", "8"),
        new("--bottom", "K", "most negative eigenvalues per block", "0"),
        new("--trace", null, "estimate the trace (Hutchinson, with standard error)"),
        new("--trace-products", "N", "Hessian-vector products for the trace", "60"),
        new("--hutchpp", null, "use Hutch++ instead of Hutchinson"),
        new("--density", null, "spectral density by stochastic Lanczos quadrature"),
        new("--density-runs", "N", "random starts for the density", "2"),
        new("--density-steps", "N", "Lanczos steps per density run", "60"),
        new("--method", "exact|kfac", "exact Hessian (Lanczos on Hessian-vector products) or the K-FAC Gauss-Newton approximation", "exact"),
        new("--kfac-samples", "N", "Monte-Carlo label samples for K-FAC's G (0: exact factors, one backward per class)", "1"),
        new("--kfac-sweep", "auto|layers|graph", "K-FAC layer by layer (one layer's graph and factors resident; language models' decoder layers) or on one graph of the whole model; the same factors", "auto"),
        new("--dtype", "TYPE", "float32 or float64", "float32"),
        new("--tol", "X", "Lanczos residual tolerance relative to the largest |eigenvalue|", DefaultNote: "1e-3 (float32), 1e-10 (float64)"),
        new("--dense-below", "N", "blocks with at most N parameters get their dense Hessian: full spectrum and exact trace", "1024"),
        new("--plots", "DIR", "folder for the PNG pictures", "geoshare-plots/analyze"),
        CommonOptions.Seed,
        CommonOptions.Threads,
        CommonOptions.Json,
    ],
    [
        "geoshare analyze --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --windows 4 --json curvature.json",
        "geoshare analyze --model assets/models/gpt2-kjv-brown --data assets/data/corpus/valid.txt --windows 4 --stride 1 --dtype float64 --params transformer.h.5.mlp.c_fc.weight,transformer.h.5.ln_2.weight --trace",
        "geoshare analyze --model assets/models/llama-kjv-brown --data assets/data/corpus/valid.txt --windows 8 --stride 16 --method kfac --top 16",
        "geoshare analyze --model assets/models/vit-fashion-mnist --fashion-mnist /usr/share/datasets/fashion-mnist --windows 64 --trace --density",
    ]);

    public int Execute(ParsedArgs a)
    {
        CommonOptions.ApplyThreads(a);
        string modelDir = a.Required("--model");
        CommonOptions.CheckOutputs(a, ["--model", "--data", "--fashion-mnist"]);
        var dtype = CalibrationOptions.DType(a);
        var method = a.Choice("--method", "exact", "kfac") == "kfac" ? CurvatureMethod.Kfac : CurvatureMethod.Exact;
        var options = new CurvatureOptions
        {
            Top = a.Int("--top", min: 0),
            Bottom = a.Int("--bottom", min: 0),
            Trace = !a.Flag("--trace") ? TraceEstimator.None : a.Flag("--hutchpp") ? TraceEstimator.HutchPlusPlus : TraceEstimator.Hutchinson,
            TraceProducts = a.Int("--trace-products", min: 2),
            Density = a.Flag("--density"),
            DensityRuns = a.Int("--density-runs", min: 1),
            DensitySteps = a.Int("--density-steps", min: 2),
            Method = method,
            KfacSamples = a.Int("--kfac-samples", min: 0),
            KfacSweep = Enum.Parse<KfacSweep>(a.Choice("--kfac-sweep", "auto", "layers", "graph"), ignoreCase: true),
            Tolerance = a.Has("--tol") ? a.Double("--tol", min: 1e-16, max: 1) : null,
            DenseBelow = a.Int("--dense-below", min: 0),
            Seed = a.Int("--seed", min: 0),
        };
        a.RefuseUnless(a.Flag("--trace"), "--hutchpp", "chooses the trace estimator: give --trace too");
        a.RefuseUnless(a.Flag("--trace"), "--trace-products", "applies to --trace: give --trace too");
        a.RefuseUnless(a.Flag("--density"), "--density-runs", "applies to --density: give --density too");
        a.RefuseUnless(a.Flag("--density"), "--density-steps", "applies to --density: give --density too");
        a.RefuseUnless(method == CurvatureMethod.Kfac, "--kfac-samples", "applies to --method kfac");
        a.RefuseUnless(method == CurvatureMethod.Kfac, "--kfac-sweep", "applies to --method kfac");
        a.NonEmptyList("--params", "every shareable weight matrix");
        a.Int("--windows", min: 1);
        a.Int("--stride", min: 1);
        a.Int("--first", min: 0);
        if (options.Top == 0 && options.Bottom == 0 && options.Trace == TraceEstimator.None && !options.Density)
            throw new UsageException("nothing to compute: --top and --bottom are 0 and neither --trace nor --density is set");

        var total = Stopwatch.StartNew();
        ConsoleProgress.Status($"loading {modelDir} ({dtype.ToString().ToLowerInvariant()})");
        var model = ModelFolder.Load(modelDir, dtype);
        using var batch = CalibrationOptions.Load(model, modelDir, a, "--windows", "--stride", "--first");
        var blocks = CurvatureEngine.ResolveBlocks(model, a.List("--params"));
        ConsoleProgress.Status($"{blocks.Count} block(s), {batch.Description}, method {method.ToString().ToLowerInvariant()}");
        var progress = new ConsoleProgress();
        var results = CurvatureEngine.Collect(model, batch, blocks, options, progress);
        progress.EndLine();

        var table = new TextTable("block", "shape", "method", "λ1", "λ2", "λ3", options.Bottom > 0 ? "λmin" : "", "trace ± se", "HVPs", "seconds");
        foreach (var r in results)
            table.Add(r.Name, SafetensorsFile.FormatShape(r.Shape), r.Method + (r.Converged ? "" : " (not converged)"),
                Eig(r.TopEigenvalues, 0), Eig(r.TopEigenvalues, 1), Eig(r.TopEigenvalues, 2),
                options.Bottom > 0 ? Eig(r.BottomEigenvalues ?? [], 0) : "",
                r.Trace is double t ? $"{t:G6} ± {r.TraceStandardError:G2}" : "", r.HessianVectorProducts, CommonOptions.Fmt(r.Seconds, "0.0"));
        Console.WriteLine(table);

        string plotDir = a.Required("--plots");
        var pictures = CurvaturePlots.Write(plotDir, model, results, Path.GetFileName(Path.TrimEndingDirectorySeparator(modelDir)));
        foreach (var p in pictures) ConsoleProgress.Status($"wrote {p}");

        double gradSeconds = results.Sum(r => r.GradientSeconds), blockSeconds = results.Sum(r => r.Seconds);
        var timing = new AnalyzeTiming(
            TotalSeconds: total.Elapsed.TotalSeconds,
            BlocksSeconds: blockSeconds,
            GradientGraphSeconds: gradSeconds,
            HessianVectorProducts: results.Sum(r => r.HessianVectorProducts),
            ProductsAndEigensolverSeconds: blockSeconds - gradSeconds,
            LoadingAndSetupSeconds: total.Elapsed.TotalSeconds - blockSeconds);
        Console.WriteLine($"{results.Count} blocks in {ConsoleProgress.Format(total.Elapsed)}: gradient graphs {gradSeconds:F1} s, " +
                          $"{timing.HessianVectorProducts} Hessian-vector products and eigensolver {timing.ProductsAndEigensolverSeconds:F1} s, loading {timing.LoadingAndSetupSeconds:F1} s");
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, new AnalyzeOutput
            {
                Model = modelDir, ModelType = model.Config.ModelType, Dtype = dtype.ToString().ToLowerInvariant(),
                Batch = batch.Description, Predictions = batch.Predictions, Method = method.ToString().ToLowerInvariant(), Options = AnalyzeOptions.From(options),
                Threads = torch.get_num_threads(), Allocator = NativeAllocator.Name, Timing = timing, Pictures = pictures, Blocks = results,
            });
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        return results.All(r => r.Converged) ? 0 : (int)ExitCode.Numerical;
    }

    private static string Eig(double[] values, int i) => i < values.Length ? values[i].ToString("G6", System.Globalization.CultureInfo.InvariantCulture) : "";
}
