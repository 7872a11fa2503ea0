using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>Checkpoints keep their dtype (F16 stays F16, BF16 stays BF16), and a model computes in bfloat16 when asked.</summary>
public class DtypeTests
{
    // Unit roundoff (half the spacing of numbers in [1, 2)): F16 has 10 fraction bits, BF16 7.
    private const double F16Roundoff = 1.0 / 2048, BF16Roundoff = 1.0 / 256;

    [Fact]
    public void WritesFloat16AndBFloat16WithTheirDtypeStringsAndReadsThemStraightIntoAComputeDtype()
    {
        using var tmp = new TempDir();
        var a = torch.randn([64, 33], generator: new Generator(3));
        var ids = torch.tensor(new long[] { 4, -1, 7 });
        foreach (var (type, name) in new[] { (ScalarType.Float16, "F16"), (ScalarType.BFloat16, "BF16"), (ScalarType.Float32, "F32") })
        {
            string path = tmp.File($"{name}.safetensors");
            SafetensorsFile.Write(path, [("a", a), ("ids", ids)], floatDType: type);
            var f = SafetensorsFile.Open(path);
            Assert.Equal(name, f.Entries["a"].DType);
            Assert.Equal("I64", f.Entries["ids"].DType); // integers are never converted
            Assert.Equal(8 + HeaderBytes(path) + f.Entries.Values.Sum(e => e.End - e.Begin), new FileInfo(path).Length);
            Assert.Equal(a.numel() * type.ElementSize(), f.Entries["a"].End - f.Entries["a"].Begin);
            using var rounded = a.to_type(type);
            using var asStored = f.Read("a", type);
            Assert.Equal(type, asStored.dtype);
            Assert.True(asStored.eq(rounded).all().item<bool>());
            using var widened = f.Read("a", ScalarType.Float32);
            Assert.True(widened.eq(rounded.to_type(ScalarType.Float32)).all().item<bool>());
            Assert.Equal(new long[] { 4, -1, 7 }, f.Read("ids").data<long>().ToArray());
        }
    }

    private static long HeaderBytes(string path)
    {
        using var fs = File.OpenRead(path);
        var len = new byte[8];
        fs.ReadExactly(len);
        return BitConverter.ToInt64(len);
    }

    /// <summary>The bundled GPT-2 compressed in memory (adjacent pairs at 0.3, 16 calibration windows) and its logits on the reference input.</summary>
    private static (PretrainedModel Model, SharingPlan Plan, Tensor Ids) CompressedGpt2()
    {
        var model = ModelLoader.Load(Repo.Gpt2);
        Assert.Equal(ScalarType.Float16, model.CheckpointDType); // the bundled checkpoint is F16, computed in float32
        var valid = TokenWindows.FromFile(Repo.Corpus("valid"), ByteLevelBpeTokenizer.Load(Repo.Gpt2), 256);
        var calibration = CalibrationSet.FromWindows(valid, valid.Select(16, 16));
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var plan = Baselines.Create("adjacent", model, 0.3, new BaselineOptions(), grams);
        PlanCompressor.Apply(model, plan, grams, new CompressionOptions());
        var ids = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors")).Read("input_ids");
        return (model, plan, ids);
    }

    private static Tensor Logits(PretrainedModel model, Tensor ids)
    {
        using var _ = torch.no_grad();
        return model.call(ids);
    }

    private static long DenseFileBytes() => Directory.GetFiles(Repo.Gpt2, "*.safetensors").Sum(f => new FileInfo(f).Length);

    [Fact]
    public void CompressedCheckpointKeepsTheSourceDtypeOrTheOneAskedForAndReloadsWithinItsRounding()
    {
        using var tmp = new TempDir();
        var (model, plan, ids) = CompressedGpt2();
        using var inMemory = Logits(model, ids);

        // Each stored weight is w(1 + δ) with |δ| ≤ u. Those errors are independent across the weights, so they add in
        // quadrature through the network and the logits move by about u relative to their size (measured: 0.26u for F16,
        // 0.39u for BF16); 2u is the bound: F16 9.8e-4, BF16 7.8e-3. The float32 file holds the model's own numbers: exact.
        foreach (var (save, name, bound) in new (ScalarType?, string, double)[]
                 { (null, "F16", 2 * F16Roundoff), (ScalarType.BFloat16, "BF16", 2 * BF16Roundoff), (ScalarType.Float32, "F32", 0) })
        {
            string dir = tmp.File($"gpt2-adjacent-30-{name}");
            CompressedCheckpoint.Save(model, plan, Repo.Gpt2, dir, saveDType: save);
            var file = SafetensorsFile.Open(Path.Combine(dir, Checkpoint.SingleFile));
            Assert.All(file.Entries.Values, e => Assert.Equal(name, e.DType));
            var reloaded = ModelFolder.Load(dir);
            Assert.Equal(ScalarType.Float32, reloaded.DType); // computed in float32 whatever the file holds
            Assert.Equal(save ?? ScalarType.Float16, reloaded.CheckpointDType);
            using var logits = Logits(reloaded, ids);
            double rel = TensorAssert.RelativeError(logits, inMemory);
            Assert.True(rel <= bound, $"{name}: reloaded logits differ from the in-memory model's by {rel:E3} (bound {bound:E2})");
            long bytes = new FileInfo(Path.Combine(dir, Checkpoint.SingleFile)).Length;
            long expected = model.ParameterCount() * (name == "F32" ? 4 : 2);
            Assert.InRange(bytes - expected, 0, 200_000); // the weights plus a JSON header
            if (name != "F32") Assert.True(bytes <= 0.8 * DenseFileBytes(), $"{name}: {bytes} bytes against the dense {DenseFileBytes()}");
        }
    }

    [Fact]
    public void BFloat16ComputesInBFloat16AndScoresLikeFloat32()
    {
        var refs = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors"));
        using var ids = refs.Read("input_ids");
        using var expected = refs.Read("logits", ScalarType.Float32);
        var f32 = ModelLoader.Load(Repo.Gpt2);
        var bf16 = ModelLoader.Load(Repo.Gpt2, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, bf16.DType);
        Assert.All(bf16.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
        Assert.Equal(f32.ParameterBytes() / 2, bf16.ParameterBytes());
        using var logits = Logits(bf16, ids);
        Assert.Equal(ScalarType.BFloat16, logits.dtype);
        // Weights and every activation rounded to 8 bits: the logits are within a few units of BF16's roundoff.
        double rel = TensorAssert.RelativeError(logits, expected);
        Assert.InRange(rel, BF16Roundoff / 100, 10 * BF16Roundoff);

        // The loss is summed in float32 from the bfloat16 logits: the perplexity is that of float32 within 1%.
        var test = TokenWindows.FromFile(Repo.Corpus("test"), ByteLevelBpeTokenizer.Load(Repo.Gpt2), 256);
        var windows = Enumerable.Range(0, 8).ToArray();
        double p32 = Evaluator.Perplexity(f32, test, windows: windows).Perplexity, p16 = Evaluator.Perplexity(bf16, test, windows: windows).Perplexity;
        Assert.True(Math.Abs(p16 / p32 - 1) < 0.01, $"bfloat16 perplexity {p16:F4}, float32 {p32:F4}");
    }
}
