using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>`geoshare verify`: a model's logits against a reference file, as a user checks their own checkpoint.</summary>
public class VerifyCommandTests
{
    private static GeoshareProcess.Result Verify(string model, string reference, string? json = null) =>
        GeoshareProcess.Run(["verify", "--model", model, "--reference", reference, .. json is null ? Array.Empty<string>() : ["--json", json]]);

    [Theory]
    [InlineData("gpt2-kjv-brown", "gpt2_logits.safetensors", "input_ids")]
    [InlineData("llama-kjv-brown", "llama_logits.safetensors", "input_ids")]
    [InlineData("vit-fashion-mnist", "vit_logits.safetensors", "pixel_values")]
    public void TheBundledReferencesMatch(string model, string reference, string input)
    {
        using var tmp = new TempDir();
        var r = Verify(Repo.Model(model), Repo.Reference(reference), tmp.File("v.json"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("||Δ||/||ref||", r.Stdout);
        var v = JsonOutput.Read<VerifyOutput>(tmp.File("v.json"));
        Assert.True(v.Matches);
        Assert.Equal(input, v.Input);
        Assert.False(v.Compressed);
        Assert.InRange(v.RelativeError, 0, 1e-4);
        Assert.True(v.RelativeError > 0); // computed, not copied: float32 rounding differs from transformers' in the last bits
        Assert.InRange(v.MaxAbsDifference, 1e-9, 1e-3);
    }

    /// <summary>A copy of the GPT-2 reference whose logits are scaled by (1 + 1e-3): ‖Δ‖/‖ref‖ = 1e-3, ten times the tolerance.</summary>
    [Fact]
    public void LogitsThatDifferExitFourWithTheNumbers()
    {
        using var tmp = new TempDir();
        var refs = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors"));
        string path = tmp.File("off.safetensors");
        SafetensorsFile.Write(path, [("input_ids", refs.Read("input_ids")), ("logits", refs.Read("logits").MulScalar(1.001))]);
        var r = Verify(Repo.Gpt2, path, tmp.File("v.json"));
        Assert.Equal(4, r.ExitCode);
        Assert.Contains(path, r.Stderr);
        var v = JsonOutput.Read<VerifyOutput>(tmp.File("v.json"));
        Assert.False(v.Matches);
        Assert.InRange(v.RelativeError, 0.9e-3 / 1.001, 1.1e-3 / 1.001);
    }

    [Fact]
    public void ACompressedFolderMatchesItsInMemoryModelAndNotTheDenseReference()
    {
        using var tmp = new TempDir();
        var model = ModelLoader.Load(Repo.Gpt2);
        var valid = TokenWindows.FromFile(Repo.Corpus("valid"), ByteLevelBpeTokenizer.Load(Repo.Gpt2), 256);
        using var grams = ActivationGrams.Collect(model, CalibrationSet.FromWindows(valid, valid.Select(16, 16)), model.Sites);
        var plan = Baselines.Create("adjacent", model, 0.3, new BaselineOptions(), grams);
        PlanCompressor.Apply(model, plan, grams, new CompressionOptions());
        string dir = tmp.File("gpt2-adjacent-30");
        CompressedCheckpoint.Save(model, plan, Repo.Gpt2, dir, saveDType: ScalarType.Float32);
        using var ids = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors")).Read("input_ids");
        Tensor logits;
        using (torch.no_grad()) logits = model.call(ids);
        string mine = tmp.File("mine.safetensors");
        SafetensorsFile.Write(mine, [("input_ids", ids), ("logits", logits)]);

        var r = Verify(dir, mine, tmp.File("v.json"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        var v = JsonOutput.Read<VerifyOutput>(tmp.File("v.json"));
        Assert.True(v.Compressed);
        Assert.Equal(0, v.RelativeError); // the float32 file holds the model's own numbers

        var dense = Verify(dir, Repo.Reference("gpt2_logits.safetensors"));
        Assert.Equal(4, dense.ExitCode); // compression changes the logits by far more than 1e-4
    }

    public static TheoryData<string, string> Malformed => new()
    {
        { "no-logits", "holds no 'logits' tensor" },
        { "no-input", "holds no 'input_ids'" },
        { "float-ids", "'input_ids' has dtype F32, expected I64" },
        { "wrong-vocab", "'logits' has shape [2, 16, 100]" },
        { "ids-1d", "'input_ids' has shape [32], expected [batch, seq]" },
        { "big-id", "outside the model's vocabulary" },
        { "pixels-for-lm", "but the model is a gpt2 language model" },
        { "not-safetensors", "not a safetensors file" },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void AMalformedReferenceExitsThreeNamingTheFile(string kind, string message)
    {
        using var tmp = new TempDir();
        var refs = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors"));
        var ids = refs.Read("input_ids");
        var logits = refs.Read("logits");
        string path = tmp.File($"{kind}.safetensors");
        switch (kind)
        {
            case "no-logits": SafetensorsFile.Write(path, [("input_ids", ids)]); break;
            case "no-input": SafetensorsFile.Write(path, [("logits", logits)]); break;
            case "float-ids": SafetensorsFile.Write(path, [("input_ids", ids.to_type(ScalarType.Float32)), ("logits", logits)]); break;
            case "wrong-vocab": SafetensorsFile.Write(path, [("input_ids", ids), ("logits", logits.narrow(2, 0, 100).contiguous())]); break;
            case "ids-1d": SafetensorsFile.Write(path, [("input_ids", ids.reshape(-1)), ("logits", logits)]); break;
            case "big-id": SafetensorsFile.Write(path, [("input_ids", ids.AddScalar(100_000L)), ("logits", logits)]); break;
            case "pixels-for-lm": SafetensorsFile.Write(path, [("pixel_values", torch.zeros(2, 1, 28, 28)), ("logits", torch.zeros(2, 10))]); break;
            case "not-safetensors": File.WriteAllText(path, "input_ids,logits\n1,2\n"); break;
        }
        var r = Verify(Repo.Gpt2, path);
        Assert.Equal(3, r.ExitCode);
        Assert.Contains(path, r.Stderr);
        Assert.Contains(message, r.Stderr);
        Assert.Single(r.Stderr.Split('\n'), l => l.Contains("error")); // one error line (after the progress lines)
    }
}
