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
        // The cells of before --eval-ood, and their out-of-domain companions.
        foreach (var name in new[] { "gpt2-none", "gpt2-adjacent-0.2", "gpt2-svd-0.2", "gpt2-geo-0.2" })
            foreach (var file in new[] { name, name + "-ood" })
                File.Copy(Path.Combine(Repo.Root, "bench/results/sharing", file + ".json"), Path.Combine(cells, file + ".json"));
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
        Assert.Contains("| **geo vs best heuristic** | better by 0.4708 |", md);
        Assert.Contains("| **ΔPPL(geo) / ΔPPL(best heuristic)** | 0.462 |", md); // (74.4596 − 74.0546) / (74.9305 − 74.0546)
        // The out-of-domain table: each row's perplexity from its companion, after the test table.
        string ood = md[md.IndexOf("Out-of-domain perplexity", StringComparison.Ordinal)..];
        foreach (var row in results.Cells)
        {
            Assert.NotNull(row.OutOfDomainPerplexity);
            string p = row.OutOfDomainPerplexity!.Value.ToString("0.0000", CultureInfo.InvariantCulture);
            Assert.Contains(row.Method == "none" ? $"| none (dense) | {p} |" : $"| {row.Method} | {p} |", ood);
        }
        string companion = Path.Combine(cells, "gpt2-svd-0.2-ood.json");
        Assert.Equal(JsonOutput.Read<GeoShare.Evaluation.CompressOutput>(companion).OodEvaluation!.Perplexity, results.Cells.Single(c => c.Method == "svd").OutOfDomainPerplexity);
        Assert.True(File.Exists(tmp.File("out/plots/quality-gpt2-ood.png")));
        Assert.NotEmpty(results.Pictures);
        foreach (var p in results.Pictures) PngAssert.IsPicture(Path.Combine(tmp.File("out"), p));
        Assert.True(File.Exists(tmp.File("out/plots/quality-gpt2.png")));
        Assert.True(File.Exists(tmp.File("out/plots/gpt2-geo-0.2/coloring.png")));
    }

    /// <summary>The sentence encoder's report: mean cosine and 10-NN agreement tables from bench/minilm.sh's committed cells.</summary>
    [Fact]
    public void MiniLmReportFromCommittedCellsComparesMeanCosineAndNeighbours()
    {
        using var tmp = new TempDir();
        string cells = tmp.File("cells");
        Directory.CreateDirectory(cells);
        foreach (var name in new[] { "minilm-adjacent-0.3", "minilm-svd-0.3", "minilm-geo-0.3" })
            File.Copy(Path.Combine(Repo.Root, "bench/results/minilm", name + ".json"), Path.Combine(cells, name + ".json"));
        var r = GeoshareProcess.Run("bench", "--models", "minilm", "--ratios", "0.3", "--methods", "adjacent,svd,geo", "--report-only",
            "--results", cells, "--out", tmp.File("out"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        string md = File.ReadAllText(tmp.File("out/report.md"));
        var results = JsonOutput.Read<BenchResults>(tmp.File("out/results.json"));
        Assert.Equal(3, results.Cells.Count);
        Assert.Contains("## minilm: mean cosine with the dense model's embeddings of the first 200 test sentences (higher is better)", md);
        Assert.Contains("| geo | 0.859945 |", md);
        Assert.Contains("| **best heuristic** | 0.855350 (svd) |", md);
        Assert.Contains("| **geo vs best heuristic** | better by 0.004595 |", md);
        Assert.Contains("| **best heuristic** | 0.6650 (svd) |", md); // 10-NN agreement
        Assert.Contains("| **geo vs best heuristic** | better by 0.0175 |", md);
        Assert.Equal(0.6825, results.Cells.Single(c => c.Method == "geo").Knn10Agreement);
        foreach (var p in results.Pictures) PngAssert.IsPicture(Path.Combine(tmp.File("out"), p));
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
