using GeoShare;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// Can the test split tell two image classifiers apart? Per-image correctness and loss of each model on the
/// Fashion-MNIST test images; for every pair, the images where exactly one is right (b: first right, c: second
/// right), McNemar's exact two-sided p for b vs c, and the mean paired loss difference with its standard error.
/// </summary>
static class PairedImages
{
    public static int Run(string jsonOut, string fashionMnist, string preprocessorDir, IReadOnlyList<string> labelledModels)
    {
        var models = labelledModels.Select(x => x.Split('=', 2)).Select(p => p.Length == 2 ? (Label: p[0], Dir: p[1])
            : throw new ArgumentException($"'{string.Join('=', p)}': expected LABEL=MODEL_DIR")).ToList();
        var test = ImageDataset.LoadFashionMnist(fashionMnist, "t10k");
        var pre = ImagePreprocessor.Load(preprocessorDir);
        var results = new List<(string Label, string Dir, bool[] Correct, double[] Nll)>();
        foreach (var (label, dir) in models)
        {
            var model = ModelFolder.Load(dir);
            var (correct, nll) = PerImage(model, test, pre);
            model.Dispose();
            Console.Error.WriteLine($"[paired] {label}: accuracy {correct.Count(c => c) / (double)correct.Length:F4}, mean NLL {nll.Average():F5}");
            results.Add((label, dir, correct, nll));
        }
        var pairs = new List<object>();
        for (int i = 0; i < results.Count; i++)
            for (int j = i + 1; j < results.Count; j++)
            {
                var (a, b) = (results[i], results[j]);
                int onlyA = a.Correct.Where((c, k) => c && !b.Correct[k]).Count();
                int onlyB = b.Correct.Where((c, k) => c && !a.Correct[k]).Count();
                var diff = a.Nll.Select((x, k) => x - b.Nll[k]).ToArray();
                double mean = diff.Average();
                double se = Math.Sqrt(diff.Sum(d => (d - mean) * (d - mean)) / (diff.Length - 1) / diff.Length);
                pairs.Add(new
                {
                    first = a.Label, second = b.Label, only_first_correct = onlyA, only_second_correct = onlyB,
                    mcnemar_exact_p = McNemarExact(onlyA, onlyB), mean_nll_difference = mean, mean_nll_difference_se = se,
                });
                Console.Error.WriteLine($"[paired] {a.Label} vs {b.Label}: only first right {onlyA}, only second right {onlyB}, p {McNemarExact(onlyA, onlyB):F3}; ΔNLL {mean:E2} ± {se:E2}");
            }
        JsonOutput.Write(jsonOut, new
        {
            benchmark = "paired-images", test_images = test.Count,
            models = results.Select(r => new { label = r.Label, model = r.Dir, accuracy = r.Correct.Count(c => c) / (double)r.Correct.Length, correct = r.Correct.Count(c => c), mean_nll = r.Nll.Average() }),
            pairs,
        });
        return 0;
    }

    static (bool[] Correct, double[] Nll) PerImage(PretrainedModel model, ImageDataset data, ImagePreprocessor pre, int batchSize = 500)
    {
        var correct = new List<bool>();
        var nll = new List<double>();
        using var _ = torch.no_grad();
        for (int start = 0; start < data.Count; start += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            var batch = Enumerable.Range(start, Math.Min(batchSize, data.Count - start)).ToArray();
            var (pixels, labels) = data.Batch(batch, pre, model.DType);
            var logits = model.call(pixels);
            correct.AddRange(logits.argmax(1).eq(labels).data<bool>().ToArray());
            nll.AddRange(torch.nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.None).to_type(ScalarType.Float64).data<double>().ToArray());
        }
        return (correct.ToArray(), nll.ToArray());
    }

    /// <summary>Two-sided exact McNemar: 2·P(X ≤ min(b, c)), X ~ Binomial(b + c, ½), capped at 1.</summary>
    public static double McNemarExact(int b, int c)
    {
        int n = b + c, k = Math.Min(b, c);
        if (n == 0) return 1;
        double logHalfN = n * Math.Log(0.5), sum = 0, logChoose = 0;
        for (int i = 0; i <= k; i++)
        {
            if (i > 0) logChoose += Math.Log(n - i + 1) - Math.Log(i);
            sum += Math.Exp(logChoose + logHalfN);
        }
        return Math.Min(1, 2 * sum);
    }
}
