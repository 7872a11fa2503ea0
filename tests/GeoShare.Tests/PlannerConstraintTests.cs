using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;

namespace GeoShare.Tests;

/// <summary>--contiguous and --private: the planner's plans obey them, by either search, and the CLI passes them on.</summary>
public class PlannerConstraintTests
{
    private static IEnumerable<int[]> SharedGroups(SharingPlan plan) =>
        plan.Types.Values.Where(t => t.Mode != SharingMode.Dense).SelectMany(t => t.Groups()).Where(g => g.Length > 1);

    private static bool Contiguous(int[] g) => g[^1] - g[0] == g.Length - 1;

    /// <summary>A tiny 12-layer GPT-2 planned at ratio 0.4 with groups of up to 2 layers.</summary>
    private static SharingPlan Plan(string search, bool contiguous = false, int[]? privateLayers = null)
    {
        var model = TinyModels.Gpt2Deep(12);
        var rng = new Random(11);
        var windows = TokenWindows.FromIds("random", Enumerable.Range(0, 8 * 32).Select(_ => rng.Next(13)).ToArray(), 8);
        using var grams = ActivationGrams.Collect(model, CalibrationSet.FromWindows(windows, windows.Select(32, 1)), model.Sites);
        using var batch = TinyModels.TokenBatch(model, windows: 4);
        using var result = GeoPlanner.Plan(model, grams, batch, new PlannerOptions
        {
            Ratio = 0.4, Curvature = CurvatureMethod.Kfac, MaxGroupSize = 2, Search = Enum.Parse<SearchMethod>(search, ignoreCase: true),
            Contiguous = contiguous, PrivateLayers = (privateLayers ?? []).ToHashSet(),
        });
        Assert.Equal(search == "exact" ? "cp-sat" : "greedy", result.Search.Method);
        return result.Plan;
    }

    [Theory]
    [InlineData("exact")]
    [InlineData("greedy")]
    public void ContiguousPlansShareOnlyRunsOfConsecutiveLayers(string search)
    {
        Assert.Contains(SharedGroups(Plan(search)), g => !Contiguous(g)); // unconstrained, it would share layers apart
        var groups = SharedGroups(Plan(search, contiguous: true)).ToList();
        Assert.NotEmpty(groups);
        Assert.All(groups, g => Assert.True(Contiguous(g), $"group {string.Join("+", g)} is not contiguous"));
    }

    [Theory]
    [InlineData("exact")]
    [InlineData("greedy")]
    public void PrivateLayersNeverShare(string search)
    {
        Assert.Contains(SharedGroups(Plan(search)), g => g.Contains(0) || g.Contains(11)); // unconstrained, they would
        var groups = SharedGroups(Plan(search, privateLayers: [0, 11])).ToList();
        Assert.NotEmpty(groups);
        Assert.All(groups, g => Assert.False(g.Contains(0) || g.Contains(11), $"group {string.Join("+", g)} shares a private layer"));
    }

    [Fact]
    public void PlanCommandPassesContiguousAndPrivateToThePlanner()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 12), data = TinyModelFolders.Text(tmp);
        SharingPlan Run(string name, params string[] extra)
        {
            var r = GeoshareProcess.Run(["plan", "--model", model, "--data", data, "--ratio", "0.4", "--calib-windows", "16", "--calib-stride", "2",
                "--search", "exact", "--out", tmp.File(name + ".json"), "--plots", tmp.File(name), .. extra]);
            Assert.True(r.ExitCode == 0, r.Stderr);
            return SharingPlan.Load(tmp.File(name + ".json"));
        }
        var free = SharedGroups(Run("free")).ToList();
        Assert.Contains(free, g => !Contiguous(g));
        Assert.Contains(free, g => g.Contains(0) || g.Contains(11));
        var constrained = SharedGroups(Run("constrained", "--contiguous", "--private", "0,11")).ToList();
        Assert.NotEmpty(constrained);
        Assert.All(constrained, g => Assert.True(Contiguous(g) && !g.Contains(0) && !g.Contains(11), $"group {string.Join("+", g)}"));
    }
}
