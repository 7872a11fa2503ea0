using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using System.Text.Json.Nodes;
using GeoShare.Cli;
using GeoShare.Models;

namespace GeoShare.Tests;

/// <summary>Input limits and bad input that once gave internal errors: exit 3, one line naming the file, short escaped quotes.</summary>
public class InputRobustnessTests
{
    private static string OneErrorLine(int expectedCode, params string[] args)
    {
        var (code, stderr, _) = OptionValidationTests.RunCli(args);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("loading ") && !l.StartsWith("tokenizing ")).ToArray();
        Assert.True(code == expectedCode, $"exit {code}:\n{stderr}");
        Assert.True(lines.Length == 1, "one line expected:\n" + stderr);
        Assert.DoesNotContain("internal error", lines[0]);
        Assert.True(lines[0].Length < 400, "long error line: " + lines[0][..Math.Min(400, lines[0].Length)]);
        Assert.DoesNotContain('\0', lines[0]);
        return lines[0];
    }

    private static string Eval(string model, string data, int code = 3) => OneErrorLine(code, "eval", "--model", model, "--data", data, "--limit", "1");

    [Fact]
    public void DevicesPipesAndHugeFilesAreRefusedWithoutReadingThem()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2);
        long before = GC.GetTotalMemory(false);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.Contains("/dev/zero: is not a regular file", Eval(model, "/dev/zero"));
        string huge = tmp.File("huge.txt");
        using (var f = File.Create(huge)) f.SetLength(BoundedFile.TextLimit + 1); // sparse: nothing is written
        Assert.Contains("larger than the limit of 268,435,456 bytes", Eval(model, huge));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10));
        Assert.True(GC.GetTotalMemory(false) - before < 64 << 20);
        string fifo = tmp.File("pipe");
        using (var mk = System.Diagnostics.Process.Start("mkfifo", fifo)!) mk.WaitForExit();
        Assert.Contains($"{fifo}: is not a regular file", Eval(model, fifo)); // refused without opening it (no writer: opening would block)
    }

    /// <summary>A copy of the tiny model whose model.safetensors header is replaced by <paramref name="header"/> (same data).</summary>
    private static string WithHeader(TempDir tmp, Func<JsonObject, JsonObject> edit, string name)
    {
        string model = TinyModelFolders.Gpt2(tmp, 2, name);
        string path = Path.Combine(model, Checkpoint.SingleFile);
        var bytes = File.ReadAllBytes(path);
        long len = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)len))!.AsObject();
        var edited = Encoding.UTF8.GetBytes(edit(header).ToJsonString());
        var data = bytes[(8 + (int)len)..];
        var output = new byte[8 + edited.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(output, (ulong)edited.Length);
        edited.CopyTo(output, 8);
        data.CopyTo(output, 8 + edited.Length);
        File.WriteAllBytes(path, output);
        return model;
    }

    private static JsonObject EditFirst(JsonObject h, Action<JsonObject> edit)
    {
        edit(h.First(kv => kv.Key != "__metadata__").Value!.AsObject());
        return h;
    }

    [Fact]
    public void SafetensorsHeadersOfTheWrongTypesOrOverflowingShapesAreBadInput()
    {
        using var tmp = new TempDir();
        string data = TinyModelFolders.Text(tmp);
        Assert.Contains("invalid shape", Eval(WithHeader(tmp, h => EditFirst(h, e => e["shape"] = new JsonArray("16", "16")), "a"), data));
        Assert.Contains("invalid data_offsets", Eval(WithHeader(tmp, h => EditFirst(h, e => e["data_offsets"] = new JsonArray("0", "4")), "b"), data));
        Assert.Contains("overflows", Eval(WithHeader(tmp, h => EditFirst(h, e => e["shape"] = new JsonArray(65536, 140737488355329)), "c"), data));
        string threeFour = Eval(WithHeader(tmp, h => EditFirst(h, e => e["shape"] = new JsonArray(4294967296, 4294967296, 4294967296)), "d"), data);
        Assert.Contains("overflows", threeFour);
        Assert.DoesNotContain("= 0 bytes", threeFour);
        Assert.Contains("malformed header entry", Eval(WithHeader(tmp, h => { h["x"] = 5; return h; }, "e"), data));
    }

    [Fact]
    public void AHeaderThatIsNotJsonIsQuotedShortAndEscaped()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        string path = Path.Combine(model, Checkpoint.SingleFile);
        var junk = new byte[1 << 20];
        new Random(1).NextBytes(junk);
        junk[0] = (byte)'{';
        junk[1] = 0;
        var bytes = new byte[8 + junk.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)junk.Length);
        junk.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        string line = Eval(model, data);
        Assert.Contains(path, line);
        Assert.Contains("not valid JSON", line);
        Assert.Contains("\\u0000", line);
    }

    [Fact]
    public void WeightMapNumbersAndTokenizerIdsOutOfRangeAreBadInput()
    {
        using var tmp = new TempDir();
        string m = tmp.CopyModel(Repo.Gpt2);
        string index = Path.Combine(m, Checkpoint.IndexFile);
        var idx = JsonNode.Parse(File.ReadAllText(index))!;
        var first = idx["weight_map"]!.AsObject().First().Key;
        idx["weight_map"]![first] = 7;
        File.WriteAllText(index, idx.ToJsonString());
        Assert.Contains($"{index}: weight_map entry for '{first}' must be a file name", Eval(m, Repo.Corpus("test")));

        string data = TinyModelFolders.Text(tmp);
        foreach (var (bad, name) in new[] { ((JsonNode)(-5), "neg"), (JsonValue.Create(99999999999L), "big"), (JsonValue.Create("7"), "str") })
        {
            string tiny = TinyModelFolders.Gpt2(tmp, 2, "tok-" + name);
            string tok = Path.Combine(tiny, "tokenizer.json");
            var t = JsonNode.Parse(File.ReadAllText(tok))!;
            t["model"]!["vocab"]!["a"] = bad;
            File.WriteAllText(tok, t.ToJsonString());
            Assert.Contains($"{tok}: token 'a' has id", Eval(tiny, data));
        }
    }

    [Fact]
    public void ATokenIdBeyondTheModelsVocabularyIsBlamedOnTheTokenizer()
    {
        using var tmp = new TempDir();
        string tiny = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        string tok = Path.Combine(tiny, "tokenizer.json");
        var t = JsonNode.Parse(File.ReadAllText(tok))!;
        t["model"]!["vocab"]!["a"] = 300; // the config's vocab_size is 257
        File.WriteAllText(tok, t.ToJsonString());
        string line = Eval(tiny, data);
        Assert.StartsWith($"geoshare eval: error: {tok}: maps text of {data} to token id 300", line);
        Assert.Contains("vocabulary of 257", line);
    }

    [Fact]
    public void AFashionMnistLabelOutsideTheClassesIsBadInput()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("fm");
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(Repo.FashionMnist, "t10k-images-idx3-ubyte.gz"), Path.Combine(dir, "t10k-images-idx3-ubyte.gz"));
        byte[] labels;
        using (var gz = new GZipStream(File.OpenRead(Path.Combine(Repo.FashionMnist, "t10k-labels-idx1-ubyte.gz")), CompressionMode.Decompress))
        using (var ms = new MemoryStream()) { gz.CopyTo(ms); labels = ms.ToArray(); }
        labels[8 + 17] = 42;
        File.WriteAllBytes(Path.Combine(dir, "t10k-labels-idx1-ubyte"), labels);
        string line = OneErrorLine(3, "eval", "--model", Repo.Vit, "--fashion-mnist", dir, "--limit", "1");
        Assert.Contains("t10k-labels-idx1-ubyte: label 42 of image 17 is outside the 10 classes", line);
    }

    [Theory]
    [InlineData("gpt2", "layer_norm_epsilon", -1.0)]
    [InlineData("llama", "rope_theta", -1.0)]
    [InlineData("llama", "rms_norm_eps", 0.0)]
    public void ConfigValuesAreRangeCheckedWhereTheyAreRead(string which, string field, double value)
    {
        using var tmp = new TempDir();
        string m = tmp.File("m");
        Directory.CreateDirectory(m);
        string source = which == "gpt2" ? Repo.Gpt2 : Repo.Llama;
        var c = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!;
        c[field] = value;
        File.WriteAllText(Path.Combine(m, "config.json"), c.ToJsonString());
        var e = Assert.Throws<BadInputException>(() => ModelConfig.Load(m));
        Assert.Equal($"{Path.Combine(m, "config.json")}: field '{field}' must be positive, got {value.ToString(System.Globalization.CultureInfo.InvariantCulture)}", e.Message);
    }

    [Fact]
    public void EachStageHasItsOwnClockAndEta()
    {
        var err = new StringWriter();
        var old = Console.Error;
        Console.SetError(err);
        try
        {
            var p = new ConsoleProgress();
            p.Report(new ProgressTick("eval", 0, 2, "windows"));
            Thread.Sleep(1500);
            p.Report(new ProgressTick("eval", 2, 2, "windows"));
            p.EndLine();
            p.Report(new ProgressTick("eval", 0, 1000, "windows")); // the next model's evaluation, same stage name
            p.Report(new ProgressTick("eval", 10, 1000, "windows"));
        }
        finally { Console.SetError(old); }
        var last = err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
        Assert.Contains("/1000 windows 0.0s", last); // not the 1.5 s of the stage before
        Assert.DoesNotContain("/1000 windows 1.", last);
    }
}
