using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using GeoShare.Models;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>Damaged inputs, run through the real program: one line naming the file and the problem, exit code, no trace, no output.</summary>
public class BadInputTests
{
    private static void AssertCleanFailure(GeoshareProcess.Result r, int exitCode, string mustName, string problem, string? jsonPath = null)
    {
        Assert.Equal(exitCode, r.ExitCode);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("loading ") && !l.StartsWith("tokenizing ")).ToArray();
        Assert.True(lines.Length == 1, "expected one error line, got:\n" + r.Stderr);
        Assert.Contains(mustName, lines[0]);
        Assert.Contains(problem, lines[0]);
        Assert.DoesNotContain("   at ", r.Stderr);
        Assert.Equal("", r.Stdout.Trim());
        if (jsonPath is not null) Assert.False(File.Exists(jsonPath), "partial output written");
    }

    private static GeoshareProcess.Result Eval(string model, string data, string json) =>
        GeoshareProcess.Run("eval", "--model", model, "--data", data, "--json", json, "--limit", "1");

    [Fact]
    public void MissingConfig()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        File.Delete(Path.Combine(m, "config.json"));
        AssertCleanFailure(Eval(m, Repo.Corpus("test"), tmp.File("o.json")), 3, Path.Combine(m, "config.json"), "missing", tmp.File("o.json"));
    }

    [Fact]
    public void MissingShard()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        string shard = Path.Combine(m, "model-00002-of-00002.safetensors");
        File.Delete(shard);
        AssertCleanFailure(Eval(m, Repo.Corpus("test"), tmp.File("o.json")), 3, shard, "shard listed in model.safetensors.index.json is missing", tmp.File("o.json"));
    }

    [Fact]
    public void TruncatedSafetensors()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        string shard = Path.Combine(m, "model-00001-of-00002.safetensors");
        var bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes[..(bytes.Length / 2)]);
        AssertCleanFailure(Eval(m, Repo.Corpus("test"), tmp.File("o.json")), 3, shard, "truncated", tmp.File("o.json"));
    }

    [Fact]
    public void HeaderThatLiesAboutOffsets()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        string shard = Path.Combine(m, "model-00001-of-00002.safetensors");
        var bytes = File.ReadAllBytes(shard);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!.AsObject();
        var entry = header["transformer.h.0.attn.c_proj.weight"]!["data_offsets"]!.AsArray();
        long begin = entry[0]!.GetValue<long>();
        entry[1] = begin + 1000; // claims fewer bytes than its shape needs
        var newHeader = Encoding.UTF8.GetBytes(header.ToJsonString());
        using (var fs = File.Create(shard))
        {
            var len = new byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)newHeader.Length);
            fs.Write(len);
            fs.Write(newHeader);
            fs.Write(bytes, 8 + (int)n, bytes.Length - 8 - (int)n);
        }
        AssertCleanFailure(Eval(m, Repo.Corpus("test"), tmp.File("o.json")), 3, shard, "transformer.h.0.attn.c_proj.weight", tmp.File("o.json"));
    }

    [Fact]
    public void WrongTensorShapeForTheConfig()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        EditConfig(m, c => c["n_positions"] = 128);
        var r = Eval(m, Repo.Corpus("test"), tmp.File("o.json"));
        AssertCleanFailure(r, 3, "model-00001-of-00002.safetensors", "'transformer.wpe.weight' has shape [256, 256], config.json implies [128, 256]", tmp.File("o.json"));
    }

    [Fact]
    public void UnknownModelType()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        EditConfig(m, c => c["model_type"] = "t5");
        AssertCleanFailure(Eval(m, Repo.Corpus("test"), tmp.File("o.json")), 3, "config.json", $"unsupported model_type 't5' (supported: {string.Join(", ", Architectures.ModelTypes)})", tmp.File("o.json"));
    }

    [Fact]
    public void EmptyDataFile()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("empty.txt"), "");
        AssertCleanFailure(Eval(Repo.Gpt2, tmp.File("empty.txt"), tmp.File("o.json")), 3, tmp.File("empty.txt"), "data file is empty", tmp.File("o.json"));
    }

    [Fact]
    public void DataShorterThanOneWindow()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("short.txt"), "In the beginning God created the heaven and the earth.");
        AssertCleanFailure(Eval(Repo.Gpt2, tmp.File("short.txt"), tmp.File("o.json")), 3, tmp.File("short.txt"), "data has 11 tokens, shorter than one 256-token window", tmp.File("o.json"));
    }

    [Fact]
    public void NaNWeights()
    {
        using var tmp = new TempDir();
        string m = tmp.File("vit");
        Directory.CreateDirectory(m);
        foreach (var f in new[] { "config.json", "preprocessor_config.json" }) File.Copy(Path.Combine(Repo.Vit, f), Path.Combine(m, f));
        var src = SafetensorsFile.Open(Path.Combine(Repo.Vit, "model.safetensors"));
        var tensors = src.Entries.Keys.Order(StringComparer.Ordinal).Select(k => (k, src.Read(k, ScalarType.Float32))).ToList();
        var poisoned = tensors.First(t => t.k == "vit.encoder.layer.3.output.dense.weight").Item2;
        poisoned[0, 0] = float.NaN;
        SafetensorsFile.Write(Path.Combine(m, "model.safetensors"), tensors);
        var r = GeoshareProcess.Run("eval", "--model", m, "--fashion-mnist", Repo.FashionMnist, "--json", tmp.File("o.json"));
        AssertCleanFailure(r, 3, "model.safetensors", "'vit.encoder.layer.3.output.dense.weight' contains NaN", tmp.File("o.json"));
    }

    [Fact]
    public void UnknownOptionIsAUsageError()
    {
        var r = GeoshareProcess.Run("eval", "--model", Repo.Gpt2, "--dataa", Repo.Corpus("test"));
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("unknown option '--dataa'", r.Stderr);
        Assert.Contains("--data", r.Stderr);
    }

    [Fact]
    public void WrongDataKindForTheModel()
    {
        var r = GeoshareProcess.Run("eval", "--model", Repo.Vit, "--data", Repo.Corpus("test"));
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("image classifier", r.Stderr);
    }

    [Fact]
    public void JsonOutputMayNotOverwriteAnInput()
    {
        using var tmp = new TempDir();
        string data = tmp.File("data.txt");
        File.Copy(Repo.Corpus("test"), data);
        long before = new FileInfo(data).Length;
        var r = GeoshareProcess.Run("eval", "--model", Repo.Gpt2, "--data", data, "--json", data);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("would overwrite an input", r.Stderr);
        Assert.Equal(before, new FileInfo(data).Length);
    }

    [Fact]
    public void LibraryErrorsNameTheLibrarysParameter()
    {
        var model = ModelLoader.Load(Repo.Gpt2);
        var e = Assert.Throws<UsageException>(() => GeoShare.Sharing.Baselines.Create("adjacent", model, 0, new GeoShare.Sharing.BaselineOptions()));
        Assert.Equal("ratio", e.Parameter);
        Assert.Equal("ratio: must be within (0, 1), got 0", e.Message);
        e = Assert.Throws<UsageException>(() => GeoShare.Sharing.ShareableTypes.Resolve(model, ["c_fcc"]));
        Assert.StartsWith("shared_types: unknown matrix type 'c_fcc'", e.Message);
        Assert.StartsWith("--share: unknown matrix type 'c_fcc'", e.MessageFor(p => p == "shared_types" ? "--share" : p));
    }

    [Theory]
    [InlineData("analyze", "--params", "transformer.h.5.mlp.c_fcc", "--params: no parameter named 'transformer.h.5.mlp.c_fcc'")]
    [InlineData("analyze", "--top", "300", "--top: 300 eigenvalues, but block transformer.h.11.ln_2.weight has only 256 parameters")]
    [InlineData("plan", "--share", "c_fcc", "--share: unknown matrix type 'c_fcc'")]
    public void TheCliNamesTheOptionOfALibraryParameter(string command, string option, string value, string message)
    {
        string[] args = command == "analyze"
            ? ["analyze", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid"), "--windows", "1", "--params", "transformer.h.11.ln_2.weight", "--top", "1"]
            : ["plan", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid"), "--ratio", "0.3"];
        // The tested option replaces the base value, or is added.
        int at = Array.IndexOf(args, option);
        if (at >= 0) args[at + 1] = value; else args = [.. args, option, value];
        var r = GeoshareProcess.Run(args);
        Assert.Equal(2, r.ExitCode);
        Assert.Single(r.Stderr.Split('\n'), l => l.Contains("error"));
        Assert.Contains($"geoshare {command}: error: {message}", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    private static void EditConfig(string modelDir, Action<JsonObject> edit)
    {
        string path = Path.Combine(modelDir, "config.json");
        var c = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(c);
        File.WriteAllText(path, c.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
