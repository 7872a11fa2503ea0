using GeoShare.Curvature;
using GeoShare.Models;
using static TorchSharp.torch;

namespace GeoShare.Tests;

public class AnalyzeCommandTests
{
    private static readonly string[] Base = ["analyze", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid")];

    [Fact]
    public void ReportsBlocksAsJsonAndWritesReadablePictures()
    {
        using var tmp = new TempDir();
        string json = tmp.File("a.json"), plots = tmp.File("plots");
        var r = GeoshareProcess.Run([.. Base, "--windows", "1", "--params", "transformer.h.11.ln_2.weight,transformer.h.11.mlp.c_proj",
            "--top", "3", "--trace", "--trace-products", "20", "--density", "--density-steps", "20", "--json", json, "--plots", plots]);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("transformer.h.11.mlp.c_proj.weight", r.Stdout);
        var output = JsonOutput.Read<AnalyzeOutput>(json);
        var blocks = output.Blocks;
        Assert.Equal(2, blocks.Count);

        var ln = blocks[0];
        Assert.Equal("dense", ln.Method);
        var spectrum = ln.Spectrum!;
        Assert.Equal(256, spectrum.Length);
        Assert.Equal(spectrum.Sum(), ln.Trace!.Value, 1e-9);
        Assert.Equal(spectrum.Max(), ln.TopEigenvalues[0], 1e-12);

        var proj = blocks[1];
        Assert.Equal("lanczos", proj.Method);
        Assert.Equal(new long[] { 1024, 256 }, proj.Shape);
        var top = proj.TopEigenvalues;
        Assert.Equal(3, top.Length);
        Assert.True(top[0] >= top[1] && top[1] >= top[2] && top[2] > 0);
        Assert.True(proj.TraceStandardError!.Value > 0);
        Assert.True(proj.HessianVectorProducts > 20);
        Assert.True(proj.GradientNorm!.Value > 0);
        Assert.True(output.Timing.TotalSeconds > 0);

        foreach (var png in new[] { "top-eigenvalue-by-layer.png", "trace-by-layer.png", "spectral-density.png", "spectrum-transformer.h.11.ln_2.weight.png" })
        {
            var bytes = File.ReadAllBytes(Path.Combine(plots, png));
            Assert.True(bytes.Length > 5000, png);
            PngAssert.IsPicture(Path.Combine(plots, png));
        }
    }

    [Fact]
    public void KfacMethodReportsEveryShareableMatrix()
    {
        using var tmp = new TempDir();
        var r = GeoshareProcess.Run([.. Base, "--windows", "1", "--method", "kfac", "--top", "2", "--json", tmp.File("k.json"), "--plots", tmp.File("p")]);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var blocks = JsonOutput.Read<AnalyzeOutput>(tmp.File("k.json")).Blocks;
        Assert.Equal(48, blocks.Count);
        Assert.All(blocks, b => Assert.True(b.TopEigenvalues[0] >= b.TopEigenvalues[1]));
        Assert.All(blocks, b => Assert.True(b.Trace!.Value > 0));
    }

    [Fact]
    public void UnknownParameterListsCloseMatches()
    {
        var r = GeoshareProcess.Run([.. Base, "--windows", "1", "--params", "transformer.h.5.mlp.c_fcc.weight"]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("no parameter named 'transformer.h.5.mlp.c_fcc.weight'", r.Stderr);
        Assert.Contains("transformer.h.5.mlp.c_fc.weight", r.Stderr);
    }

    [Fact]
    public void KLargerThanTheBlockIsRefused()
    {
        var r = GeoshareProcess.Run([.. Base, "--windows", "1", "--params", "transformer.h.0.ln_1.weight", "--top", "300"]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("has only 256 parameters", r.Stderr);
    }

    [Fact]
    public void ZeroWindowsIsRefused()
    {
        var r = GeoshareProcess.Run([.. Base, "--windows", "0"]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--windows", r.Stderr);
    }

    [Fact]
    public void NonFiniteLossIsANumericalFailure()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        string shard = Path.Combine(m, "model-00002-of-00002.safetensors");
        var file = SafetensorsFile.Open(shard);
        var tensors = file.Entries.Keys.Order(StringComparer.Ordinal).Select(k => (k, file.Read(k, ScalarType.Float32))).ToList();
        tensors.First(t => t.k == "transformer.ln_f.weight").Item2.FillScalar_(1e38f); // logits overflow to ±inf
        SafetensorsFile.Write(shard, tensors);
        var r = GeoshareProcess.Run("analyze", "--model", m, "--data", Repo.Corpus("valid"), "--windows", "1", "--params", "transformer.h.11.mlp.c_proj", "--top", "1", "--json", tmp.File("o.json"));
        Assert.Equal(4, r.ExitCode);
        Assert.Contains("not finite", r.Stderr);
        Assert.False(File.Exists(tmp.File("o.json")));
    }
}
