using ScottPlot;

namespace GeoShare.Reporting;

/// <summary>One line of a line chart; a reference line (e.g. the dense model) is drawn black and dashed.</summary>
public sealed record Series(string Label, double[] X, double[] Y, bool Reference = false);

/// <summary>PNG charts a person reads: title, labelled axes, legend. Written atomically.</summary>
public static class Charts
{
    public const int Width = 900, Height = 560;

    public static void Line(string path, string title, string xLabel, string yLabel, IReadOnlyList<Series> series,
        bool logY = false, IReadOnlyList<string>? xTicks = null, bool markers = true, Alignment legend = Alignment.UpperRight)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category20();
        int colour = 0;
        foreach (var s in series)
        {
            var y = logY ? s.Y.Select(v => v > 0 ? Math.Log10(v) : double.NaN).ToArray() : s.Y;
            var line = plot.Add.Scatter(s.X, y);
            line.LegendText = s.Label;
            line.MarkerSize = markers && !s.Reference ? 6 : 0;
            line.LineWidth = 2;
            line.Color = s.Reference ? Colors.Black : palette.GetColor(colour++);
            if (s.Reference) line.LinePattern = LinePattern.Dashed;
        }
        if (logY)
        {
            var ticks = new ScottPlot.TickGenerators.NumericAutomatic
            {
                LabelFormatter = v => Math.Pow(10, v).ToString("G3", System.Globalization.CultureInfo.InvariantCulture),
            };
            plot.Axes.Left.TickGenerator = ticks;
        }
        if (xTicks is not null)
        {
            var manual = new ScottPlot.TickGenerators.NumericManual();
            for (int i = 0; i < xTicks.Count; i++) manual.AddMajor(i, xTicks[i]);
            plot.Axes.Bottom.TickGenerator = manual;
        }
        Finish(plot, path, title, xLabel, logY ? yLabel + " (log scale)" : yLabel, series.Count > 1, legend);
    }

    /// <summary>A matrix as a colored grid with a color bar; rows top to bottom.</summary>
    public static void Heatmap(string path, string title, string xLabel, string yLabel, double[,] values,
        IReadOnlyList<string>? columnLabels = null, IReadOnlyList<string>? rowLabels = null, string colorbarLabel = "")
    {
        var plot = new Plot();
        var hm = plot.Add.Heatmap(values);
        hm.Colormap = new ScottPlot.Colormaps.Viridis();
        var bar = plot.Add.ColorBar(hm);
        bar.Label = colorbarLabel;
        int rows = values.GetLength(0), cols = values.GetLength(1);
        var xt = new ScottPlot.TickGenerators.NumericManual();
        for (int c = 0; c < cols; c++) xt.AddMajor(c, columnLabels?[c] ?? c.ToString());
        plot.Axes.Bottom.TickGenerator = xt;
        var yt = new ScottPlot.TickGenerators.NumericManual();
        for (int r = 0; r < rows; r++) yt.AddMajor(rows - 1 - r, rowLabels?[r] ?? r.ToString());
        plot.Axes.Left.TickGenerator = yt;
        Finish(plot, path, title, xLabel, yLabel, legend: false);
    }

    /// <summary>Categorical grid (e.g. colorings: rows × layers, each cell a group id) with labels in the cells.</summary>
    public static void Grid(string path, string title, string xLabel, string yLabel, int[,] groups,
        IReadOnlyList<string> columnLabels, IReadOnlyList<string> rowLabels)
    {
        var plot = new Plot();
        int rows = groups.GetLength(0), cols = groups.GetLength(1);
        var palette = new ScottPlot.Palettes.Category20();
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                int g = groups[r, c];
                double y = rows - 1 - r;
                var rect = plot.Add.Rectangle(c - 0.45, c + 0.45, y - 0.4, y + 0.4);
                rect.FillColor = g < 0 ? Colors.LightGray : palette.GetColor(g);
                rect.LineWidth = 0;
                var t = plot.Add.Text(g < 0 ? "–" : g.ToString(), c, y);
                t.LabelFontSize = 11;
                t.LabelAlignment = Alignment.MiddleCenter;
            }
        var xt = new ScottPlot.TickGenerators.NumericManual();
        for (int c = 0; c < cols; c++) xt.AddMajor(c, columnLabels[c]);
        plot.Axes.Bottom.TickGenerator = xt;
        var yt = new ScottPlot.TickGenerators.NumericManual();
        for (int r = 0; r < rows; r++) yt.AddMajor(rows - 1 - r, rowLabels[r]);
        plot.Axes.Left.TickGenerator = yt;
        plot.Axes.SetLimits(-0.6, cols - 0.4, -0.6, rows - 0.4);
        Finish(plot, path, title, xLabel, yLabel, legend: false);
    }

    private static void Finish(Plot plot, string path, string title, string xLabel, string yLabel, bool legend, Alignment where = Alignment.UpperRight)
    {
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        if (legend) plot.ShowLegend(where);
        var bytes = plot.GetImageBytes(Width, Height, ImageFormat.Png);
        AtomicFile.WriteBytes(path, bytes);
    }
}
