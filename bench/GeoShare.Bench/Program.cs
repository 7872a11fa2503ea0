using System.Diagnostics;
using GeoShare;
using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

// Benchmarks and independent checks that take too long for unit tests. Each compares two things in one run.
//   hvp-ratio  JSON_OUT    time of one Hessian-vector product / one gradient, same batch and block, GPT-2
//   verify-fd  JSON_OUT    dense Hessian of transformer.h.5.ln_2.weight (float64, 4 windows) by products vs by
//                          central differences of gradients, and its spectrum
//   fidelity   JSON_OUT    predicted (exact and K-FAC block models) vs measured increase of calibration loss over
//                          many sharing plans of GPT-2, Spearman correlations, and the cross-layer part of δᵀHδ
//   fidelity-images JSON_OUT FASHION_MNIST_DIR
//                          the same ranking check (K-FAC) for the ViT at ratios 0.6 and 0.8
//   paired-images JSON_OUT FASHION_MNIST_DIR PREPROCESSOR_DIR LABEL=MODEL_DIR...
//                          per-image correctness and loss of image classifiers on the test split, McNemar per pair
//   fidelity-by-ratio JSON the per-ratio Spearman table of fidelity.md from fidelity's JSON (markdown rows)
//   fixture NAME OUT_DIR [SEED]
//                          a random-weight checkpoint of a real shape (gpt2-124m, llama-1b, llama-32x1024, ...; bench/scale.sh)
//   screening MODEL_DIR JSON_OUT [--partners P] [--no-eval] RATIO...
//                          geo plans with full and screened costing on one curvature; both evaluated on the test split
//   screening-time MODEL_DIR JSON_OUT RATIO
//                          the screen's bounds of every allowed group, timed, against exact costs of 12 pairs a type (one thread)
//   eval-library MODEL_DIR DATA WINDOWS
//                          the CLI's `eval --limit WINDOWS` through the library alone (bench/allocator.sh: a library host)
// Every benchmark in one outer dispose scope, as the CLI's commands (GeoShare.TensorLifetime).
return TensorLifetime.InScope(() => Dispatch(args));

static int Dispatch(string[] args)
{
    if (args.Length >= 2 && args[0] == "fidelity") return Fidelity.Run(args[1]);
    if (args.Length >= 2 && args[0] == "fidelity-by-ratio") return Fidelity.ByRatio(args[1]);
    if (args.Length >= 3 && args[0] == "ablation")
        return Ablation.Run(args[1], args[2], args.Length >= 4 ? args[3] : "assets/data/out-of-domain/gpl-3.txt", args.Length >= 5 ? int.Parse(args[4]) : 256,
            args.Length >= 6 ? args[5..].Select(x => double.Parse(x, System.Globalization.CultureInfo.InvariantCulture)).ToArray() : [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]);
    if (args.Length == 3 && args[0] == "two-pass") return Ablation.TwoPass(args[1], double.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture), 256);
    if (args.Length >= 3 && args[0] == "fidelity-sentences") return Fidelity.RunSentences(args[1], args[2], args.Length >= 4 ? int.Parse(args[3]) : 200);
    if (args.Length >= 3 && args[0] == "fidelity-images") return Fidelity.RunImages(args[1], args[2]);
    if (args.Length == 4 && args[0] == "screening-time") return Screening.Time(args[1], args[2], double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture));
    if (args.Length >= 4 && args[0] == "screening")
    {
        var rest = args[3..].ToList();
        int partners = 3;
        bool evaluate = !rest.Remove("--no-eval");
        int at = rest.IndexOf("--partners");
        if (at >= 0) { partners = int.Parse(rest[at + 1], System.Globalization.CultureInfo.InvariantCulture); rest.RemoveRange(at, 2); }
        return Screening.Run(args[1], args[2], rest.Select(a => double.Parse(a, System.Globalization.CultureInfo.InvariantCulture)).ToArray(), partners, evaluate);
    }
    if (args.Length >= 3 && args[0] == "fixture") return Fixtures.Write(args[1], args[2], args.Length >= 4 ? long.Parse(args[3]) : 13);
    if (args.Length >= 4 && args[0] == "eval-library") return EvalLibrary(args[1], args[2], int.Parse(args[3]));
    if (args.Length >= 6 && args[0] == "paired-images") return PairedImages.Run(args[1], args[2], args[3], args[4..]);
    return args.Length >= 2 && args[0] switch { "hvp-ratio" => true, "verify-fd" => true, _ => false }
        ? Run(args[0], args[1])
        : Usage();
}

static int Usage()
{
    Console.Error.WriteLine("usage: GeoShare.Bench (hvp-ratio|verify-fd|fidelity) JSON_OUT | fidelity-by-ratio JSON | paired-images JSON_OUT FASHION_MNIST_DIR PREPROCESSOR_DIR LABEL=MODEL_DIR... (from the repository root)");
    return 2;
}

static int EvalLibrary(string modelDir, string data, int windowCount)
{
    var model = ModelLoader.Load(modelDir, ScalarType.Float32);
    var windows = TokenWindows.FromFile(data, ByteLevelBpeTokenizer.Load(modelDir), 256);
    var s = Evaluator.Perplexity(model, windows, windows: Enumerable.Range(0, Math.Min(windowCount, windows.Count)).ToArray());
    Console.WriteLine($"perplexity {s.Perplexity:0.0000} over {s.Windows} windows, {s.Seconds:0.0} s, allocator {NativeAllocator.Name}");
    return 0;
}

static int Run(string what, string jsonOut)
{
    var dtype = what == "verify-fd" ? ScalarType.Float64 : ScalarType.Float32;
    var model = ModelLoader.Load("assets/models/gpt2-kjv-brown", dtype);
    var tokenizer = ByteLevelBpeTokenizer.Load("assets/models/gpt2-kjv-brown");
    var windows = TokenWindows.FromFile("assets/data/corpus/valid.txt", tokenizer, 256);
    using var batch = LanguageModelBatch.FromWindows(windows, windows.Select(4, 1));
    object result = what == "hvp-ratio" ? HvpRatio(model, batch) : VerifyFiniteDifferences(model, batch);
    JsonOutput.Write(jsonOut, new { benchmark = what, batch = batch.Description, allocator = NativeAllocator.Name, threads = torch.get_num_threads(), result });
    Console.WriteLine(JsonOutput.Serialize(result));
    return 0;
}

static object HvpRatio(PretrainedModel model, LossBatch batch)
{
    const int reps = 10;
    var rows = new List<object>();
    foreach (var name in new[] { "transformer.h.0.attn.c_attn.weight", "transformer.h.5.mlp.c_fc.weight", "transformer.h.11.mlp.c_proj.weight" })
    {
        var p = (Tensor)model.ParametersByName()[name];
        // One gradient: forward and backward of the loss for this block, as an optimiser step would.
        double Gradient()
        {
            p.requires_grad = true;
            var sw = Stopwatch.StartNew();
            using (var scope = torch.NewDisposeScope())
            {
                var g = torch.autograd.grad([batch.Loss(model)], [p]);
            }
            p.requires_grad = false;
            return sw.Elapsed.TotalMilliseconds;
        }
        Gradient();
        using var h = new BlockHessian(model, batch, [p]);
        var v = torch.randn(h.Dimension, generator: new Generator(1));
        h.Operator.Apply(v).Dispose();
        var grad = new List<double>();
        var hvp = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            grad.Add(Gradient());
            var sw = Stopwatch.StartNew();
            h.Operator.Apply(v).Dispose();
            hvp.Add(sw.Elapsed.TotalMilliseconds);
        }
        double g = Median(grad), hv = Median(hvp);
        rows.Add(new { block = name, gradient_ms = g, hessian_vector_product_ms = hv, ratio = hv / g, repetitions = reps });
        Console.Error.WriteLine($"{name}: gradient {g:F0} ms, HVP {hv:F0} ms, ratio {hv / g:F2}");
    }
    return rows;
}

static object VerifyFiniteDifferences(PretrainedModel model, LossBatch batch)
{
    const string name = "transformer.h.5.ln_2.weight";
    var p = (Tensor)model.ParametersByName()[name];
    var sw = Stopwatch.StartNew();
    Tensor byProducts;
    using (var h = new BlockHessian(model, batch, [p])) byProducts = h.Exact();
    double productSeconds = sw.Elapsed.TotalSeconds;
    sw.Restart();
    long n = p.numel();
    const double step = 1e-4;
    var fd = torch.zeros(n, n, dtype: ScalarType.Float64);
    Tensor Grad()
    {
        p.requires_grad = true;
        using var scope = torch.NewDisposeScope();
        var g = torch.autograd.grad([batch.Loss(model)], [p])[0].detach().clone().MoveToOuterDisposeScope();
        p.requires_grad = false;
        return g;
    }
    for (long j = 0; j < n; j++)
    {
        double orig;
        using (torch.no_grad()) { orig = p[j].item<double>(); p[j] = orig + step; }
        using var plus = Grad();
        using (torch.no_grad()) p[j] = orig - step;
        using var minus = Grad();
        using (torch.no_grad()) p[j] = orig;
        fd[TensorIndex.Colon, j] = plus.sub(minus).DivScalar(2 * step);
        if (j % 32 == 0) Console.Error.WriteLine($"finite differences: column {j}/{n}");
    }
    double fdSeconds = sw.Elapsed.TotalSeconds;
    var fdSym = fd.add(fd.t(), Scalars.One).MulScalar(0.5);
    double rel = byProducts.sub(fdSym).norm().item<double>() / fdSym.norm().item<double>();
    var e1 = torch.linalg.eigvalsh(byProducts).data<double>().Reverse().ToArray();
    var e2 = torch.linalg.eigvalsh(fdSym).data<double>().Reverse().ToArray();
    return new
    {
        block = name, parameters = n, step,
        relative_difference = rel,
        top8_by_products = e1.Take(8), top8_by_finite_differences = e2.Take(8),
        trace_by_products = e1.Sum(), trace_by_finite_differences = e2.Sum(),
        max_eigenvalue_difference = e1.Zip(e2, (a, b) => Math.Abs(a - b)).Max(),
        seconds_products = productSeconds, seconds_finite_differences = fdSeconds,
    };
}

static double Median(List<double> x) { var s = x.Order().ToList(); return s[s.Count / 2]; }
