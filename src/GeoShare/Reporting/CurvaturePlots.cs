using GeoShare.Curvature;
using GeoShare.Models;

namespace GeoShare.Reporting;

/// <summary>The pictures `geoshare analyze` writes: curvature by layer and matrix type, and spectral densities.</summary>
public static class CurvaturePlots
{
    /// <summary>Layer index and in-layer name of a parameter ("transformer.h.5.mlp.c_fc.weight" → 5, "mlp.c_fc"), or null.</summary>
    public static (int Layer, string Type)? LayerAndType(PretrainedModel model, string parameter)
    {
        for (int l = 0; l < model.Config.NumLayers; l++)
        {
            string prefix = model.LayerPrefix(l) + ".";
            if (!parameter.StartsWith(prefix)) continue;
            string rest = parameter[prefix.Length..];
            return (l, rest.EndsWith(".weight") ? rest[..^".weight".Length] : rest);
        }
        return null;
    }

    public static IReadOnlyList<string> Write(string dir, PretrainedModel model, IReadOnlyList<BlockCurvature> blocks, string modelLabel)
    {
        Directory.CreateDirectory(dir);
        var written = new List<string>();
        var located = blocks.Select(b => (Block: b, Where: LayerAndType(model, b.Name))).Where(x => x.Where is not null).ToList();
        var types = located.Select(x => x.Where!.Value.Type).Distinct().ToList();

        IReadOnlyList<Series> ByLayer(Func<BlockCurvature, double?> value) => types.Select(t =>
        {
            var pts = located.Where(x => x.Where!.Value.Type == t && value(x.Block) is double v && double.IsFinite(v))
                .OrderBy(x => x.Where!.Value.Layer).ToList();
            return new Series(t, pts.Select(x => (double)x.Where!.Value.Layer).ToArray(), pts.Select(x => value(x.Block)!.Value).ToArray());
        }).Where(s => s.X.Length > 0).ToList();

        // K-FAC approximates the Gauss-Newton matrix, not the Hessian: say which curvature a picture shows.
        string curvature = located.Count > 0 && located.All(x => x.Block.Method == "kfac") ? "K-FAC curvature" : "Hessian";
        var top = ByLayer(b => b.TopEigenvalues.Length > 0 ? b.TopEigenvalues[0] : null);
        if (top.Count > 0)
        {
            string p = Path.Combine(dir, "top-eigenvalue-by-layer.png");
            bool log = top.All(s => s.Y.All(v => v > 0));
            Charts.Line(p, $"{modelLabel}: largest {curvature} eigenvalue per block", "layer", "λ_max", top, logY: log);
            written.Add(p);
        }
        var trace = ByLayer(b => b.Trace);
        if (trace.Count > 0)
        {
            string p = Path.Combine(dir, "trace-by-layer.png");
            bool log = trace.All(s => s.Y.All(v => v > 0));
            Charts.Line(p, $"{modelLabel}: {curvature} trace per block", "layer", "trace", trace, logY: log);
            written.Add(p);
        }
        var densities = blocks.Where(b => b.Density is not null).Take(8)
            .Select(b => new Series(b.Name, b.DensityGrid!, b.Density!)).ToList();
        if (densities.Count > 0)
        {
            string p = Path.Combine(dir, "spectral-density.png");
            Charts.Line(p, $"{modelLabel}: spectral density (stochastic Lanczos quadrature)", "eigenvalue", "density", densities, markers: false);
            written.Add(p);
        }
        foreach (var b in blocks.Where(b => b.Spectrum is not null).Take(8))
        {
            string p = Path.Combine(dir, $"spectrum-{Sanitize(b.Name)}.png");
            var sorted = b.Spectrum!.Reverse().ToArray();
            Charts.Line(p, $"{b.Name}: all {sorted.Length} Hessian eigenvalues", "index (descending)", "eigenvalue",
                [new Series("eigenvalue", Enumerable.Range(0, sorted.Length).Select(i => (double)i).ToArray(), sorted)], markers: false);
            written.Add(p);
        }
        return written;
    }

    public static string Sanitize(string name) => new(name.Select(c => char.IsLetterOrDigit(c) || c is '.' or '-' or '_' ? c : '_').ToArray());
}
