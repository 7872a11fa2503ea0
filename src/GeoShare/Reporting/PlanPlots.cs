using GeoShare.Models;
using GeoShare.Sharing;

namespace GeoShare.Reporting;

/// <summary>Pictures of a sharing plan: its coloring (types × layers) and the pairwise sharing costs of each type.</summary>
public static class PlanPlots
{
    /// <summary>Writes coloring.png and pairwise-cost-{type}.png into <paramref name="dir"/>; returns the paths.</summary>
    public static IReadOnlyList<string> Write(string dir, PretrainedModel model, SharingPlan plan, IReadOnlyDictionary<string, double[,]>? pairwise,
        string label)
    {
        Directory.CreateDirectory(dir);
        var written = new List<string> { Coloring(Path.Combine(dir, "coloring.png"), plan, $"{label}: {plan.Method} plan at ratio {plan.Ratio:0.00}") };
        written.AddRange(PairwiseCosts(dir, pairwise, label));
        return written;
    }

    /// <summary>Writes pairwise-cost-{type}.png into <paramref name="dir"/> for each type (the only heatmap renderer of these costs).</summary>
    public static IReadOnlyList<string> PairwiseCosts(string dir, IReadOnlyDictionary<string, double[,]>? pairwise, string label)
    {
        var written = new List<string>();
        foreach (var (type, matrix) in pairwise ?? new Dictionary<string, double[,]>())
        {
            string path = Path.Combine(dir, $"pairwise-cost-{CurvaturePlots.Sanitize(type)}.png");
            var layers = Enumerable.Range(0, matrix.GetLength(0)).Select(i => i.ToString()).ToArray();
            Charts.Heatmap(path, $"{label}: predicted extra loss of sharing two layers ({type})", "layer", "layer", matrix, layers, layers,
                "ΔL(pair) − ΔL(i) − ΔL(j)");
            written.Add(path);
        }
        return written;
    }

    /// <summary>One row per matrix type, one column per layer; layers of one color share (same number, same fill).</summary>
    public static string Coloring(string path, SharingPlan plan, string title)
    {
        var types = plan.Types.Keys.ToList();
        var grid = new int[types.Count, plan.NumLayers];
        for (int t = 0; t < types.Count; t++)
        {
            var tp = plan.Types[types[t]];
            for (int l = 0; l < plan.NumLayers; l++) grid[t, l] = tp.Mode == SharingMode.Dense ? -1 : tp.Coloring[l];
        }
        Charts.Grid(path, title, "layer (cell: color; equal colors share)", "matrix type", grid,
            Enumerable.Range(0, plan.NumLayers).Select(i => i.ToString()).ToArray(), types);
        return path;
    }
}
