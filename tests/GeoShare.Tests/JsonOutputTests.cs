using System.Text.Json.Nodes;
using GeoShare.Curvature;
using GeoShare.Evaluation;
using GeoShare.Planning;
using GeoShare.Reporting;

namespace GeoShare.Tests;

/// <summary>The `--json` records against the committed results: every field of every committed output reads back.</summary>
public class JsonOutputTests
{
    /// <summary>Just the field that says which command wrote a file.</summary>
    private sealed record CommandField(string? Command);

    private static readonly Dictionary<string, Func<string, object>> Readers = new()
    {
        // a sentence encoder's eval (--sentences --against) writes EmbeddingEvalOutput
        ["eval"] = p => File.ReadAllText(p).Contains("\"sentences_file\"") ? JsonOutput.Read<EmbeddingEvalOutput>(p) : JsonOutput.Read<EvalOutput>(p),
        ["compress"] = p => JsonOutput.Read<CompressOutput>(p),
        ["analyze"] = p => JsonOutput.Read<AnalyzeOutput>(p),
        ["plan"] = p => JsonOutput.Read<PlanOutput>(p),
        ["demo"] = p => JsonOutput.Read<DemoOutput>(p),
        ["bench"] = p => JsonOutput.Read<BenchOutput>(p),
        ["verify"] = p => JsonOutput.Read<VerifyOutput>(p),
        ["export"] = p => JsonOutput.Read<GeoShare.Export.ExportOutput>(p),
    };

    public static IEnumerable<object[]> CommittedCommandOutputs() =>
        Directory.GetFiles(Repo.Path("bench", "results"), "*.json", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Where(f => JsonOutput.Read<CommandField>(f).Command is not null)
            .Select(f => new object[] { Path.GetRelativePath(Repo.Root, f) });

    [Fact]
    public void EveryCommittedCellIsACommandOutput()
    {
        var cells = Directory.GetFiles(Repo.Path("bench", "results", "sharing"), "*.json");
        Assert.True(cells.Length >= 120, $"{cells.Length} cells");
        var outputs = CommittedCommandOutputs().Select(o => Path.GetFullPath(Path.Combine(Repo.Root, (string)o[0]))).ToHashSet();
        Assert.All(cells, c => Assert.Contains(Path.GetFullPath(c), outputs));
    }

    /// <summary>Read into the record and written again, the file loses no field and changes no value: the names match.</summary>
    [Theory]
    [MemberData(nameof(CommittedCommandOutputs))]
    public void CommittedOutputReadsBackIntoItsRecord(string file)
    {
        string path = Repo.Path(file);
        string command = JsonOutput.Read<CommandField>(path).Command!;
        Assert.True(Readers.ContainsKey(command), $"{file}: no record for command '{command}'");
        var record = Readers[command](path);
        var original = JsonNode.Parse(File.ReadAllText(path))!;
        var again = JsonNode.Parse(JsonOutput.Serialize(record))!;
        AssertContains(original, again, "$");
    }

    /// <summary>Every property of <paramref name="expected"/> is in <paramref name="actual"/> with an equal value.</summary>
    private static void AssertContains(JsonNode? expected, JsonNode? actual, string at)
    {
        switch (expected)
        {
            case JsonObject o:
                var a = Assert.IsType<JsonObject>(actual);
                foreach (var (key, value) in o)
                {
                    Assert.True(a.ContainsKey(key), $"{at}.{key} is lost by the record");
                    AssertContains(value, a[key], $"{at}.{key}");
                }
                break;
            case JsonArray arr:
                var b = Assert.IsType<JsonArray>(actual);
                Assert.True(arr.Count == b.Count, $"{at}: {arr.Count} items, read back {b.Count}");
                for (int i = 0; i < arr.Count; i++) AssertContains(arr[i], b[i], $"{at}[{i}]");
                break;
            case null:
                Assert.True(actual is null, $"{at}: null, read back {actual?.ToJsonString()}");
                break;
            default:
                var e = expected.AsValue();
                Assert.True(actual is JsonValue, $"{at}: {e.ToJsonString()}, read back {actual?.ToJsonString()}");
                // Numbers compare as numbers: a double written as 0 reads back as 0.
                if (e.TryGetValue<double>(out var x) && actual.AsValue().TryGetValue<double>(out var y))
                    Assert.True(x.Equals(y), $"{at}: {x:R}, read back {y:R}");
                else
                    Assert.True(e.ToJsonString() == actual.ToJsonString(), $"{at}: {e.ToJsonString()}, read back {actual.ToJsonString()}");
                break;
        }
    }

    /// <summary>The whole report from the committed cells, regenerated through the records: byte-identical text and pictures.</summary>
    [Fact]
    public void BenchReportFromTheCommittedCellsIsByteIdentical()
    {
        using var tmp = new TempDir();
        // The same layout as the repository (results/sharing under the report's folder), so the relative links agree.
        string cells = tmp.File("results/sharing");
        CopyTree(Repo.Path("bench", "results", "sharing"), cells);
        var r = GeoshareProcess.Run("bench", "--report-only", "--results", cells, "--out", tmp.Path, "--json", tmp.File("bench.json"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(File.ReadAllText(Repo.Path("bench", "report.md")), File.ReadAllText(tmp.File("report.md")));
        Assert.Equal(File.ReadAllText(Repo.Path("bench", "results.json")), File.ReadAllText(tmp.File("results.json")));
        var results = JsonOutput.Read<BenchResults>(tmp.File("results.json"));
        Assert.Equal(163, results.Cells.Count); // dense + 10 methods at 6 ratios (GPT-2, LLaMA) or 4 (the ViT)
        Assert.All(results.Cells.Where(c => c.Model != "vit"), c => Assert.NotNull(c.OutOfDomainPerplexity));
        var plots = results.Pictures.Where(p => p.StartsWith("plots/")).ToList();
        Assert.Contains(plots, p => p.Contains("pairwise-cost-"));
        foreach (var p in plots)
            Assert.True(File.ReadAllBytes(Repo.Path("bench", p)).SequenceEqual(File.ReadAllBytes(Path.Combine(tmp.Path, p))), $"{p} differs from the committed picture");
        var summary = JsonOutput.Read<BenchOutput>(tmp.File("bench.json"));
        Assert.Equal(("bench", 163 + 3, 0), (summary.Command, summary.Cells, summary.Missing)); // and a curvature cell per model
    }

    [Fact]
    public void MalformedOutputIsOneLineNamingTheFile()
    {
        using var tmp = new TempDir();
        string path = tmp.File("cell.json");
        File.WriteAllText(path, "{\n  \"command\": \"eval\",\n  \"mean_nll\": \n}");
        var e = Assert.Throws<BadInputException>(() => JsonOutput.Read<EvalOutput>(path));
        Assert.StartsWith(path + ": malformed EvalOutput JSON at line 4", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        File.WriteAllText(path, "{ \"command\": \"eval\", \"mean_nll\": \"low\" }");
        e = Assert.Throws<BadInputException>(() => JsonOutput.Read<EvalOutput>(path));
        Assert.Contains("$.mean_nll", e.Message);

        File.WriteAllText(path, "{ \"command\": \"eval\" }");
        e = Assert.Throws<BadInputException>(() => JsonOutput.Read<EvalOutput>(path));
        Assert.Contains("missing required properties", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        e = Assert.Throws<BadInputException>(() => JsonOutput.Read<EvalOutput>(tmp.File("absent.json")));
        Assert.Equal(tmp.File("absent.json") + ": missing", e.Message);
    }

    [Fact]
    public void BenchNamesAMalformedCell()
    {
        using var tmp = new TempDir();
        string cells = tmp.File("cells");
        Directory.CreateDirectory(cells);
        File.Copy(Repo.Path("bench", "results", "sharing", "gpt2-none.json"), Path.Combine(cells, "gpt2-none.json"));
        File.WriteAllText(Path.Combine(cells, "gpt2-adjacent-0.2.json"), "{ \"command\": \"compress\", ");
        var r = GeoshareProcess.Run("bench", "--models", "gpt2", "--ratios", "0.2", "--methods", "adjacent", "--report-only",
            "--results", cells, "--out", tmp.File("out"));
        Assert.Equal(3, r.ExitCode);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains(Path.Combine(cells, "gpt2-adjacent-0.2.json") + ": malformed CompressOutput JSON", lines[0]);
        Assert.False(File.Exists(tmp.File("out/report.md")), "partial output written");
    }

    private static void CopyTree(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        foreach (var d in Directory.GetDirectories(from)) CopyTree(d, Path.Combine(to, Path.GetFileName(d)));
    }
}
