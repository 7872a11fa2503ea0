using System.Diagnostics;

namespace GeoShare.Tests;

/// <summary>Conflicting or out-of-range options are refused (never clamped or ignored), and before the model is loaded.</summary>
public class OptionValidationTests
{
    /// <summary>Runs the CLI's own entry in this process; returns exit code and the error lines.</summary>
    public static (int Code, string Stderr, TimeSpan Elapsed) RunCli(params string[] args)
    {
        var err = new StringWriter();
        var oldErr = Console.Error;
        var oldOut = Console.Out;
        var clock = Stopwatch.StartNew();
        try
        {
            Console.SetError(err);
            Console.SetOut(TextWriter.Null);
            int code = GeoShare.Cli.Cli.Run(args);
            return (code, err.ToString(), clock.Elapsed);
        }
        finally
        {
            Console.SetError(oldErr);
            Console.SetOut(oldOut);
        }
    }

    private static string[] Compress(params string[] extra) =>
        ["compress", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid"), .. extra];

    public static IEnumerable<object[]> Refused() =>
    [
        [Compress("--ratio", "0.3", "--method", "bogus"), "--method: unknown method 'bogus'"],
        [Compress("--ratio", "0", "--method", "adjacent"), "--ratio: must be within (0, 1), got 0"],
        [Compress("--ratio", "1", "--method", "adjacent"), "--ratio: must be within (0, 1), got 1"],
        [new[] { "plan", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid"), "--ratio", "1" }, "--ratio: must be within (0, 1), got 1"],
        [new[] { "demo", "--ratio", "0" }, "--ratio: must be within (0, 1), got 0"],
        [Compress("--plan", "p.json", "--ratio", "0.9"), "--ratio conflicts with --plan"],
        [Compress("--plan", "p.json", "--method", "all"), "--method conflicts with --plan"],
        [Compress("--ratio", "0.3", "--method", "adjacent", "--group-size", "13"), "--group-size: must be within 1..12 (the model has 12 layers), got 13"],
        [Compress("--ratio", "0.3", "--method", "cycle", "--unique", "13"), "--unique: must be within 1..12 (the model has 12 layers), got 13"],
        [Compress("--ratio", "0.3", "--method", "cycle", "--group-size", "3"), "--group-size applies to --method adjacent, similarity, random, not cycle"],
        [Compress("--ratio", "0.3", "--method", "adjacent", "--curvature", "exact"), "--curvature is a Geo-Sharing option"],
        [Compress("--ratio", "0.3", "--method", "geo", "--trust", "-1"), "--trust: must be at least 0, got -1"],
        [Compress("--ratio", "0.3", "--method", "adjacent", "--eval-limit", "3"), "--eval-limit limits --eval"],
        [Compress("--ratio", "0.3", "--method", "adjacent", "--force"), "--force replaces an --out folder"],
        [new[] { "analyze", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid"), "--windows", "1", "--params", "" }, "--params: empty list"],
        [new[] { "analyze", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid"), "--windows", "1", "--hutchpp" }, "--hutchpp chooses the trace estimator"],
        [new[] { "eval", "--model", Repo.Vit, "--fashion-mnist", Repo.FashionMnist, "--window", "64" }, "--window applies to language models"],
        [new[] { "plan", "--model", Repo.Gpt2, "--data", Repo.Corpus("valid"), "--ratio", "0.3", "--private", "" }, "--private: empty list"],
        [Compress("--ratio", "0.3", "--method", "geo", "--kept-offsets", "0,1.5"), "--kept-offsets: every offset must be within (−1, 1], got 0,1.5"],
        [Compress("--ratio", "0.3", "--method", "geo", "--kept-offsets", "0,x"), "--kept-offsets: expected numbers separated by commas, got 'x'"],
        [Compress("--plan", "p.json", "--kept-offsets", "0"), "--kept-offsets shapes the planner's search, which --plan p.json has already made"],
        [Compress("--ratio", "0.3", "--method", "geo", "--prescreen", "0"), "--prescreen: expected auto, off or a number of partners of at least 1, got '0'"],
        [Compress("--ratio", "0.3", "--method", "adjacent", "--prescreen", "2"), "--prescreen is a Geo-Sharing option"],
        [Compress("--plan", "p.json", "--prescreen", "off"), "--prescreen shapes the planner's search, which --plan p.json has already made"],
        [Compress("--plan", "p.json", "--max-group", "3"), "--max-group shapes the planner's search"],
    ];

    [Theory]
    [MemberData(nameof(Refused))]
    public void RefusedBeforeTheModelIsLoaded(string[] args, string message)
    {
        var (code, stderr, elapsed) = RunCli(args);
        Assert.True(code == 2, $"exit {code}: {stderr}");
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, "one line expected:\n" + stderr); // no "loading …": refused before
        Assert.Contains(message, lines[0]);
        Assert.True(elapsed < TimeSpan.FromSeconds(1), $"took {elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public void LibraryRefusesGroupSizesTheModelCannotHave()
    {
        var model = GeoShare.Models.ModelLoader.Load(Repo.Gpt2);
        var e = Assert.Throws<UsageException>(() => GeoShare.Sharing.Baselines.Create("adjacent", model, 0.3, new GeoShare.Sharing.BaselineOptions { GroupSize = 13 }));
        Assert.Equal("group_size", e.Parameter);
        e = Assert.Throws<UsageException>(() => GeoShare.Sharing.Baselines.Create("sequence", model, 0.3, new GeoShare.Sharing.BaselineOptions { UniqueBlocks = 13 }));
        Assert.Equal("unique_blocks", e.Parameter);
    }

    [Fact]
    public void LongOrControlCharacterArgumentsAreQuotedShortAndEscaped()
    {
        var (code, stderr, _) = RunCli(Compress("--ratio", "0.3", "--method", new string('x', 5000) + "\0\n"));
        Assert.Equal(2, code);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.True(line.Length < 300, line);
        Assert.DoesNotContain('\0', line);
    }
}
