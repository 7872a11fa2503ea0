using System.Globalization;
using GeoShare.Reporting;

namespace GeoShare.Tests;

public class BenchCommandTests
{
    [Fact]
    public void ReportFromCommittedCellsAgreesWithResultsJsonAndHasPictures()
    {
        using var tmp = new TempDir();
        string cells = tmp.File("cells");
        Directory.CreateDirectory(cells);
        foreach (var name in new[] { "gpt2-none", "gpt2-adjacent-0.2", "gpt2-svd-0.2", "gpt2-geo-0.2" })
            File.Copy(Path.Combine(Repo.Root, "bench/results/sharing", name + ".json"), Path.Combine(cells, name + ".json"));
        var r = GeoshareProcess.Run("bench", "--models", "gpt2", "--ratios", "0.2", "--methods", "adjacent,svd,geo", "--report-only",
            "--results", cells, "--out", tmp.File("out"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        string md = File.ReadAllText(tmp.File("out/report.md"));
        var results = JsonOutput.Read<BenchResults>(tmp.File("out/results.json"));
        Assert.Equal(4, results.Cells.Count);
        foreach (var row in results.Cells)
        {
            string metric = row.Metric.ToString("0.0000", CultureInfo.InvariantCulture);
            Assert.Contains(row.Method == "none" ? $"| none (dense) | {metric} |" : $"| {row.Method} | {metric} |", md);
        }
        Assert.Contains("| **best heuristic** | 74.9305 (adjacent) |", md);
        Assert.Contains("| **geo vs best heuristic** | better by 0.3285 |", md);
        Assert.NotEmpty(results.Pictures);
        foreach (var p in results.Pictures) PngAssert.IsPicture(Path.Combine(tmp.File("out"), p));
        Assert.True(File.Exists(tmp.File("out/plots/quality-gpt2.png")));
        Assert.True(File.Exists(tmp.File("out/plots/gpt2-geo-0.2/coloring.png")));
    }

    [Fact]
    public void UnknownModelOrMethodIsAUsageError()
    {
        var r = GeoshareProcess.Run("bench", "--models", "bert", "--report-only");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--models", r.Stderr);
        r = GeoshareProcess.Run("bench", "--methods", "magic", "--report-only");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--methods", r.Stderr);
    }
}
