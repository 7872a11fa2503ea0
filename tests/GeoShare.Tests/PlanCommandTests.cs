using GeoShare.Models;
using GeoShare.Reporting;
using GeoShare.Sharing;

namespace GeoShare.Tests;

public class PlanCommandTests
{
    private static readonly string[] Base = ["plan", "--model", Repo.Gpt2, "--data", "assets/data/corpus/valid.txt"];

    [Theory]
    [InlineData("--ratio", "1.5")]
    [InlineData("--private", "12")]
    [InlineData("--curvature", "hessian")]
    [InlineData("--search", "annealing")]
    [InlineData("--max-group", "0")]
    public void BadPlannerOptionsAreUsageErrorsNamingTheOption(string option, string value)
    {
        string[] args = option == "--ratio" ? [.. Base, option, value] : [.. Base, "--ratio", "0.3", option, value];
        var r = GeoshareProcess.Run(args);
        Assert.Equal(2, r.ExitCode);
        var errors = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.Contains("error")).ToArray();
        Assert.Single(errors);
        Assert.Contains(option, errors[0]);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void GeoRefusesTiedMatrices()
    {
        var r = GeoshareProcess.Run("compress", "--model", Repo.Gpt2, "--data", "assets/data/corpus/valid.txt", "--ratio", "0.3", "--method", "geo", "--mode", "tie");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--mode tie", r.Stderr);
    }

    [Fact]
    public void ColoringPictureIsARealPng()
    {
        var model = ModelLoader.Load(Repo.Gpt2);
        var plan = Baselines.Create("adjacent", model, 0.3, new BaselineOptions());
        string dir = Path.Combine(Path.GetTempPath(), $"geoshare-png-{Guid.NewGuid():N}");
        try
        {
            var pairwise = new Dictionary<string, double[,]> { ["mlp.c_fc"] = new double[12, 12] };
            for (int i = 0; i < 12; i++) for (int j = 0; j < 12; j++) pairwise["mlp.c_fc"][i, j] = Math.Abs(i - j);
            var files = PlanPlots.Write(dir, model, plan, pairwise, "gpt2");
            Assert.Equal(2, files.Count);
            foreach (var f in files)
            {
                var bytes = File.ReadAllBytes(f);
                Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8]);
                int width = (bytes[16] << 24) | (bytes[17] << 16) | (bytes[18] << 8) | bytes[19];
                int height = (bytes[20] << 24) | (bytes[21] << 16) | (bytes[22] << 8) | bytes[23];
                Assert.True(width >= 400 && height >= 300, $"{f}: {width}×{height}");
                Assert.True(bytes.Length > 10_000, $"{f}: {bytes.Length} bytes is too small to hold labelled axes");
                PngAssert.IsPicture(f, 400, 300);
            }
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
