using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Sharing;

namespace GeoShare.Tests;

/// <summary>`geoshare compress` on a toy GPT-2 folder: --force, and the refit's default.</summary>
public class CompressCommandTests
{
    private static GeoshareProcess.Result Compress(string model, string data, params string[] extra) =>
        GeoshareProcess.Run(["compress", "--model", model, "--data", data, "--calib-windows", "16", "--calib-stride", "2", .. extra]);

    private static byte[] Weights(string dir) => File.ReadAllBytes(Path.Combine(dir, Checkpoint.SingleFile));

    [Fact]
    public void ExistingOutputIsRefusedWithoutForceAndReplacedWithIt()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        string outDir = tmp.File("out");
        var first = Compress(model, data, "--ratio", "0.3", "--method", "adjacent", "--out", outDir);
        Assert.True(first.ExitCode == 0, first.Stderr);
        var written = Weights(outDir);
        var files = Directory.GetFiles(outDir).Select(Path.GetFileName).Order().ToArray();

        var refused = Compress(model, data, "--ratio", "0.5", "--method", "all", "--out", outDir);
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("--force", refused.Stderr);
        Assert.Equal(written, Weights(outDir)); // untouched
        Assert.Equal("adjacent", SharingPlan.Load(Path.Combine(outDir, CompressedCheckpoint.PlanFile)).Method);

        var forced = Compress(model, data, "--ratio", "0.5", "--method", "all", "--out", outDir, "--force");
        Assert.True(forced.ExitCode == 0, forced.Stderr);
        var plan = SharingPlan.Load(Path.Combine(outDir, CompressedCheckpoint.PlanFile));
        Assert.Equal("all", plan.Method);
        Assert.Equal(0.5, plan.Ratio);
        Assert.NotEqual(written, Weights(outDir));
        Assert.Equal(files, Directory.GetFiles(outDir).Select(Path.GetFileName).Order().ToArray());
        Assert.True(ModelFolder.Load(outDir).ParameterCount() < ModelLoader.Load(model).ParameterCount());
        // Nothing left beside it: no staging or old copy.
        Assert.Equal(["out"], Directory.GetDirectories(tmp.Path).Select(Path.GetFileName).Where(n => n!.StartsWith("out")).ToArray());
    }

    [Fact]
    public void RefitIsOnByDefaultFromRatioPointFourAndOffBelow()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        byte[] Run(string ratio, string name, params string[] extra)
        {
            var r = Compress(model, data, ["--ratio", ratio, "--method", "adjacent", "--out", tmp.File(name), .. extra]);
            Assert.True(r.ExitCode == 0, r.Stderr);
            return Weights(tmp.File(name));
        }
        Assert.NotEqual(Run("0.4", "auto-40"), Run("0.4", "off-40", "--refit", "off"));
        Assert.Equal(Run("0.4", "on-40", "--refit", "on"), Weights(tmp.File("auto-40")));
        Assert.Equal(Run("0.3", "auto-30"), Run("0.3", "off-30", "--refit", "off"));
    }

    /// <summary>
    /// --eval-ood: the compressed model's perplexity on a second text equals `eval` of the written checkpoint on it, in
    /// memory and layer by layer; the test text's evaluation is unchanged by it; refused by name for the ViT.
    /// </summary>
    [Fact]
    public void OutOfDomainEvaluationIsTheWrittenModelsPerplexityOnThatText()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp), ood = Repo.Path("assets", "data", "out-of-domain", "gpl-3.txt");
        CompressOutput Run(string name, params string[] extra)
        {
            var r = Compress(model, data, ["--ratio", "0.4", "--method", "adjacent", "--out", tmp.File(name), "--eval", data, "--eval-ood", ood,
                "--eval-limit", "12", "--save-dtype", "float32", "--json", tmp.File(name + ".json"), .. extra]);
            Assert.True(r.ExitCode == 0, r.Stderr);
            return JsonOutput.Read<CompressOutput>(tmp.File(name + ".json"));
        }
        var inMemory = Run("in-memory", "--streaming", "off");
        var e = GeoshareProcess.Run("eval", "--model", tmp.File("in-memory"), "--data", ood, "--limit", "12", "--json", tmp.File("eval.json"));
        Assert.True(e.ExitCode == 0, e.Stderr);
        var written = JsonOutput.Read<EvalOutput>(tmp.File("eval.json"));
        Assert.Equal(ood, inMemory.OodEvaluation!.Data);
        Assert.Equal(written.Perplexity!.Value, inMemory.OodEvaluation.Perplexity!.Value, 1e-9);
        Assert.NotEqual(inMemory.Evaluation!.Perplexity, inMemory.OodEvaluation.Perplexity);
        var layered = Run("layered", "--streaming", "on");
        Assert.Equal(written.Perplexity!.Value, layered.OodEvaluation!.Perplexity!.Value, 1e-4);
        Assert.Equal(inMemory.Evaluation.Perplexity!.Value, layered.Evaluation!.Perplexity!.Value, 1e-4);

        var vit = GeoshareProcess.Run("compress", "--model", Repo.Vit, "--fashion-mnist", Repo.FashionMnist, "--ratio", "0.4", "--method", "adjacent",
            "--eval", "t10k", "--eval-ood", ood, "--json", tmp.File("vit.json"));
        Assert.Equal(2, vit.ExitCode);
        Assert.Contains("--eval-ood: a second text applies to language models", vit.Stderr);
        Assert.False(File.Exists(tmp.File("vit.json")));
    }
}
