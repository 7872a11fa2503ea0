using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;

namespace GeoShare.Tests;

/// <summary>The README's library example is this code, verbatim: it compiles with the tests and runs here.</summary>
public class ReadmeExampleTests
{
    private static double Example(string dir, string corpus, string outDir)
    {
        // README-EXAMPLE-BEGIN
        using var scope = torch.NewDisposeScope(); // every tensor below lives until the scope ends
        // load
        var model = ModelFolder.Load(dir);
        var tokenizer = ByteLevelBpeTokenizer.Load(dir);
        var valid = TokenWindows.FromFile($"{corpus}/valid.txt", tokenizer, windowLength: 256);
        var test = TokenWindows.FromFile($"{corpus}/test.txt", tokenizer, windowLength: 256);

        // analyze: top Hessian eigenvalues of one block on 4 windows
        using var batch = LanguageModelBatch.FromWindows(valid, valid.Select(4, 1));
        using (var block = BlockHessian.For(model, batch, ["transformer.h.5.mlp.c_fc.weight"]))
            Console.WriteLine($"λ_max = {block.Eigenvalues(4).Values[0]:G4}");

        // plan: Geo-Sharing at ratio 0.3 (K-FAC curvature, whitening from 64 calibration windows)
        var calibration = CalibrationSet.FromWindows(valid, valid.Select(64, 16));
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        using var planner = GeoPlanner.Plan(model, grams, batch, new PlannerOptions { Ratio = 0.3, Curvature = CurvatureMethod.Kfac });

        // compress (in place, curvature-aligned coefficients), save, evaluate
        PlanCompressor.Apply(model, planner.Plan, grams, new CompressionOptions { Coefficients = new CurvatureAlignedSolver(planner.Costs) });
        CompressedCheckpoint.Save(model, planner.Plan, dir, outDir);
        var score = Evaluator.Perplexity(ModelFolder.Load(outDir), test, windows: Enumerable.Range(0, 16).ToArray());
        Console.WriteLine($"perplexity {score.Perplexity:F4} with {model.ParameterCount():N0} parameters");
        // README-EXAMPLE-END
        return score.Perplexity;
    }

    [Fact]
    public void ReadmeExampleIsThisCodeAndRuns()
    {
        string source = File.ReadAllText(Path.Combine(Repo.Root, "tests/GeoShare.Tests/ReadmeExampleTests.cs"));
        string Region(string text, string begin, string end)
        {
            int i = text.IndexOf(begin, StringComparison.Ordinal), j = text.IndexOf(end, StringComparison.Ordinal);
            Assert.True(i >= 0 && j > i, $"markers {begin} … {end} not found");
            var lines = text[(text.IndexOf('\n', i) + 1)..j].Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0);
            return string.Join("\n", lines);
        }
        string code = Region(source, "// README-EXAMPLE-" + "BEGIN", "// README-EXAMPLE-" + "END");
        string readme = Region(File.ReadAllText(Path.Combine(Repo.Root, "README.md")), "<!-- README-EXAMPLE-" + "BEGIN -->", "<!-- README-EXAMPLE-" + "END -->");
        Assert.Equal(code, string.Join("\n", readme.Split('\n').Where(l => !l.StartsWith("```") && !l.StartsWith("string dir"))));

        using var tmp = new TempDir();
        double ppl = Example(Repo.Gpt2, Path.Combine(Repo.Root, "assets/data/corpus"), tmp.File("gpt2-geo-30"));
        var dense = Evaluator.Perplexity(ModelLoader.Load(Repo.Gpt2), TokenWindows.FromFile(Path.Combine(Repo.Root, "assets/data/corpus/test.txt"),
            ByteLevelBpeTokenizer.Load(Repo.Gpt2), 256), windows: Enumerable.Range(0, 16).ToArray());
        // Compressed at 0.3: a little worse than dense, not broken.
        Assert.InRange(ppl, dense.Perplexity, dense.Perplexity * 1.1);
    }
}
