using System.Text.Json.Nodes;
using GeoShare.Cli;
using GeoShare.Cli.Commands;
using GeoShare.Curvature;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Reporting;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

public class PlanCommandTests
{
    private static readonly string[] Base = ["plan", "--model", Repo.Gpt2, "--data", "assets/data/corpus/valid.txt"];

    [Theory]
    [InlineData("--ratio", "1.5")]
    [InlineData("--private", "12")]
    [InlineData("--curvature", "hessian")]
    [InlineData("--search", "annealing")]
    [InlineData("--max-group", "0")]
    public void BadPlannerOptionsAreUsageErrorsNamingTheOption(string option, string value)
    {
        string[] args = option == "--ratio" ? [.. Base, option, value] : [.. Base, "--ratio", "0.3", option, value];
        var r = GeoshareProcess.Run(args);
        Assert.Equal(2, r.ExitCode);
        var errors = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.Contains("error")).ToArray();
        Assert.Single(errors);
        Assert.Contains(option, errors[0]);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void GeoRefusesTiedMatrices()
    {
        var r = GeoshareProcess.Run("compress", "--model", Repo.Gpt2, "--data", "assets/data/corpus/valid.txt", "--ratio", "0.3", "--method", "geo", "--mode", "tie");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--mode tie", r.Stderr);
    }

    [Fact]
    public void ColoringPictureIsARealPng()
    {
        var model = ModelLoader.Load(Repo.Gpt2);
        var plan = Baselines.Create("adjacent", model, 0.3, new BaselineOptions());
        string dir = Path.Combine(Path.GetTempPath(), $"geoshare-png-{Guid.NewGuid():N}");
        try
        {
            var pairwise = new Dictionary<string, double[,]> { ["mlp.c_fc"] = new double[12, 12] };
            for (int i = 0; i < 12; i++) for (int j = 0; j < 12; j++) pairwise["mlp.c_fc"][i, j] = Math.Abs(i - j);
            var files = PlanPlots.Write(dir, model, plan, pairwise, "gpt2");
            Assert.Equal(2, files.Count);
            foreach (var f in files)
            {
                var bytes = File.ReadAllBytes(f);
                Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8]);
                int width = (bytes[16] << 24) | (bytes[17] << 16) | (bytes[18] << 8) | bytes[19];
                int height = (bytes[20] << 24) | (bytes[21] << 16) | (bytes[22] << 8) | bytes[23];
                Assert.True(width >= 400 && height >= 300, $"{f}: {width}×{height}");
                Assert.True(bytes.Length > 10_000, $"{f}: {bytes.Length} bytes is too small to hold labelled axes");
                PngAssert.IsPicture(f, 400, 300);
            }
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    /// <summary>A GPT-2 of 8 hidden units with random weights and the bundled tokenizer, as a model folder the commands read.</summary>
    private static string TinyGpt2Folder(TempDir tmp, int layers)
    {
        string dir = tmp.File($"tiny-gpt2-{layers}");
        Directory.CreateDirectory(dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(Repo.Gpt2, "config.json")))!.AsObject();
        config["n_embd"] = 8;
        config["n_head"] = 2;
        config["n_layer"] = layers;
        config["n_inner"] = 16;
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt" })
            File.Copy(Path.Combine(Repo.Gpt2, f), Path.Combine(dir, f));
        var model = ModelLoader.Build(ModelConfig.Load(dir), new RandomTensorSource(7, ScalarType.Float32));
        var tensors = model.ParametersByName().Where(p => p.Key != "lm_head.weight").OrderBy(p => p.Key, StringComparer.Ordinal)
            .Select(p => (p.Key, (Tensor)p.Value)).ToList();
        SafetensorsFile.Write(Path.Combine(dir, Checkpoint.SingleFile), tensors);
        return dir;
    }

    /// <summary>The first 60 kB of the validation text: enough for 16 calibration windows, quick to tokenize.</summary>
    private static string SmallData(TempDir tmp)
    {
        string path = tmp.File("data.txt");
        File.WriteAllText(path, File.ReadAllText(Repo.Corpus("valid"))[..60_000]);
        return path;
    }

    private static string[] Tiny(string model, string data) => ["--model", model, "--data", data, "--calib-windows", "16", "--calib-stride", "1"];

    private static byte[] Weights(string dir) => File.ReadAllBytes(Path.Combine(dir, Checkpoint.SingleFile));

    private static GeoshareProcess.Result Ok(params string[] args)
    {
        var r = GeoshareProcess.Run(args);
        Assert.True(r.ExitCode == 0, $"geoshare {string.Join(' ', args)}: exit {r.ExitCode}\n{r.Stderr}");
        return r;
    }

    [Fact]
    public void AGeoPlanFileReproducesCompressMethodGeoByteForByte()
    {
        using var tmp = new TempDir();
        var args = Tiny(TinyGpt2Folder(tmp, 2), SmallData(tmp));
        string planFile = tmp.File("plan.json");
        // Ratio 0.4: the refit runs too, with the curvature-aligned solver.
        var planned = Ok(["plan", .. args, "--ratio", "0.4", "--out", planFile, "--plots", tmp.File("plots"), "--json", tmp.File("plan-report.json")]);
        Assert.Contains("costing: full (auto: full costing is", planned.Stderr);
        Assert.Contains("search: exact (auto: ", planned.Stderr);
        Assert.Contains("group × rank choices is within the exact search's limit of 40,000)", planned.Stderr);
        var report = JsonNode.Parse(File.ReadAllText(tmp.File("plan-report.json")))!;
        Assert.Equal("auto", (string?)report["planner"]!["search"]!["requested"]);
        Assert.Equal("exact", (string?)report["planner"]!["search"]!["chosen"]);
        Assert.NotNull(report["planner"]!["greedy_on_the_same_costs"]);
        var coefficients = JsonNode.Parse(File.ReadAllText(planFile))!["coefficients"]!;
        Assert.Equal("curvature-aligned", (string?)coefficients["method"]);
        Assert.Equal("kfac", (string?)coefficients["curvature"]);

        Ok(["compress", .. args, "--plan", planFile, "--out", tmp.File("from-plan")]);
        Ok(["compress", .. args, "--ratio", "0.4", "--method", "geo", "--out", tmp.File("geo")]);
        Assert.Equal(Weights(tmp.File("geo")), Weights(tmp.File("from-plan")));

        // The same coloring and ranks without the recorded coefficients get Basis Sharing's: other weights.
        var bare = JsonNode.Parse(File.ReadAllText(planFile))!.AsObject();
        bare.Remove("coefficients");
        File.WriteAllText(tmp.File("bare.json"), bare.ToJsonString());
        Ok(["compress", .. args, "--plan", tmp.File("bare.json"), "--out", tmp.File("bare")]);
        Assert.NotEqual(Weights(tmp.File("geo")), Weights(tmp.File("bare")));

        // Options that would compute other coefficients than the plan records are refused, before any output.
        foreach (var (option, value, says) in new[] { ("--curvature", "exact", "--curvature exact conflicts"), ("--trust", "1", "--trust 1 conflicts"),
                     ("--curvature-windows", "2", "curvature batch"), ("--dtype", "float64", "--dtype float64 conflicts") })
        {
            var r = GeoshareProcess.Run(["compress", .. args, "--plan", planFile, option, value, "--out", tmp.File("refused")]);
            Assert.Equal(2, r.ExitCode);
            Assert.Contains(says, r.Stderr);
            Assert.False(Directory.Exists(tmp.File("refused")));
        }
    }

    [Fact]
    public void AHeuristicPlanFileKeepsBasisSharingsCoefficients()
    {
        using var tmp = new TempDir();
        var args = Tiny(TinyGpt2Folder(tmp, 2), SmallData(tmp));
        Ok(["compress", .. args, "--ratio", "0.4", "--method", "adjacent", "--out", tmp.File("adjacent")]);
        string planFile = Path.Combine(tmp.File("adjacent"), CompressedCheckpoint.PlanFile);
        Assert.Null(JsonNode.Parse(File.ReadAllText(planFile))!["coefficients"]);
        Ok(["compress", .. args, "--plan", planFile, "--out", tmp.File("from-plan")]);
        Assert.Equal(Weights(tmp.File("adjacent")), Weights(tmp.File("from-plan")));
    }

    [Fact]
    public void SearchExactRunsBeyondTwelveLayersAndAutoSaysWhichRan()
    {
        using var tmp = new TempDir();
        var args = Tiny(TinyGpt2Folder(tmp, 13), SmallData(tmp));
        var exact = Ok(["plan", .. args, "--ratio", "0.3", "--search", "exact", "--out", tmp.File("p.json"), "--plots", tmp.File("plots")]);
        Assert.Contains("search: exact (requested; 2,002 group × rank choices on 13 layers per type)", exact.Stderr);
        Assert.True(File.Exists(tmp.File("p.json")));

        // 13 layers, groups of 2: (3 × 91 + 13) groups × 7 ranks (kept 0.3, 0.5 … 0.9, 0.98) is within auto's limit.
        var auto = Ok(["plan", .. args, "--ratio", "0.3", "--out", tmp.File("p.json"), "--plots", tmp.File("plots"), "--json", tmp.File("r.json")]);
        Assert.Contains("search: exact (auto: 2,002 group × rank choices is within the exact search's limit of 40,000)", auto.Stderr);
        Assert.Equal([0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.98],
            JsonNode.Parse(File.ReadAllText(tmp.File("r.json")))!["planner"]!["kept_fractions"]!.AsArray().Select(x => (double)x!).ToArray());
        var search = JsonNode.Parse(File.ReadAllText(tmp.File("r.json")))!["planner"]!["search"]!;
        Assert.Equal("cp-sat", (string?)search["method"]);
        Assert.Equal("auto", (string?)search["requested"]);
        Assert.Equal("exact", (string?)search["chosen"]);
        var costing = JsonNode.Parse(File.ReadAllText(tmp.File("r.json")))!["planner"]!["costing"]!;
        Assert.Equal(("full", 286, 286), ((string?)costing["chosen"], (int)costing["allowed_groups"]!, (int)costing["costed_groups"]!));
        // The group-size histogram covers every layer of the shared types once, and the console says the same.
        var sizes = JsonNode.Parse(File.ReadAllText(tmp.File("r.json")))!["planner"]!["group_sizes"]!.AsObject()
            .ToDictionary(kv => int.Parse(kv.Key), kv => (int)kv.Value!);
        var plan = SharingPlan.Load(tmp.File("p.json"));
        int sharedLayers = plan.Types.Values.Where(t => t.Mode != SharingMode.Dense).Sum(t => t.Coloring.Length);
        Assert.Equal(sharedLayers, sizes.Sum(kv => kv.Key * kv.Value));
        Assert.All(sizes.Keys, k => Assert.InRange(k, 1, 2));
        Assert.Contains($"group sizes (groups × layers per group): {SharingPlan.DescribeGroupSizes(sizes)}", auto.Stdout);
    }

    [Fact]
    public void LibraryDefaultsAreTheCommandLineDefaults()
    {
        var model = TinyModels.Gpt2();
        var cli = PlannerCliOptions.Parse(new ParsedArgs(new(), new(), new PlanCommand().Spec.Options), model, 0.3);
        var library = new PlannerOptions { Ratio = 0.3 };
        Assert.Equal(library.Curvature, cli.Curvature);
        Assert.Equal(CurvatureMethod.Kfac, cli.Curvature);
        Assert.Equal(library.TopK, cli.TopK);
        Assert.Equal(library.Tolerance, cli.Tolerance);
        Assert.Equal(library.TraceProducts, cli.TraceProducts);
        Assert.Equal(library.KfacSamples, cli.KfacSamples);
        Assert.Equal(library.MaxGroupSize, cli.MaxGroupSize);
        Assert.Equal(library.Contiguous, cli.Contiguous);
        Assert.Equal(library.PrivateLayers, cli.PrivateLayers);
        Assert.Equal(library.SharedTypes ?? ShareableTypes.Default(model), cli.SharedTypes);
        Assert.Equal(library.Trust, cli.Trust);
        Assert.Equal(library.UseGradient, cli.UseGradient);
        Assert.Equal(library.Search, cli.Search);
        Assert.Equal(SearchMethod.Auto, cli.Search);
        Assert.Equal(library.TimeLimitSeconds, cli.TimeLimitSeconds);
        Assert.Equal(library.KeptOffsets, cli.KeptOffsets);
        Assert.Equal(library.Seed, cli.Seed);
        // --refit auto is the library's null (from ratio 0.4).
        Assert.Equal("auto", new CompressCommand().Spec.Options.Single(o => o.Name == "--refit").Default);
        Assert.Null(new CompressionOptions().Refit);
        Assert.Null(new CompressionOptions().Coefficients);
    }
}
