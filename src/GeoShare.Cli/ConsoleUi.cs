using System.Diagnostics;
using System.Text;

namespace GeoShare.Cli;

/// <summary>
/// A progress bar on stderr: redrawn in place on a terminal, a line per 10% (or per 15 s) when redirected,
/// so that logs of long runs stay readable.
/// </summary>
public sealed class ConsoleProgress : IProgress<ProgressTick>
{
    private readonly bool _interactive = !Console.IsErrorRedirected;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private string _stage = "";
    private long _lastDecile = -1;
    private double _lastLine;
    private TimeSpan _stageStart;
    private bool _open;
    private long _lastDone;
    private bool _ended;

    public static bool Quiet { get; set; }

    public void Report(ProgressTick t)
    {
        if (Quiet) return;
        lock (_clock) ReportLocked(t); // the planner reports from several workers
    }

    private void ReportLocked(ProgressTick t)
    {
        // A new stage, or the same one started over (demo evaluates three models as "eval"): its own clock and ETA.
        if (t.Stage != _stage || t.Done < _lastDone || _ended)
        {
            EndLine();
            _ended = false;
            _stage = t.Stage;
            _lastDecile = -1;
            _stageStart = _clock.Elapsed;
        }
        _lastDone = t.Done;
        double frac = t.Total > 0 ? Math.Clamp((double)t.Done / t.Total, 0, 1) : 0;
        double secs = (_clock.Elapsed - _stageStart).TotalSeconds;
        double rate = secs > 0 ? t.Done / secs : 0;
        string eta = rate > 0 && t.Done < t.Total ? $" eta {Format(TimeSpan.FromSeconds((t.Total - t.Done) / rate))}" : "";
        const int width = 28;
        int fill = (int)Math.Round(frac * width);
        string line = $"{t.Stage,-10} [{new string('#', fill)}{new string('.', width - fill)}] {t.Done}/{t.Total} {t.Unit} {Format(TimeSpan.FromSeconds(secs))}{eta}";
        if (_interactive)
        {
            Console.Error.Write("\r" + line.PadRight(Math.Min(Console.BufferWidth > 0 ? Console.BufferWidth - 1 : 100, 110)));
            _open = true;
            if (t.Done >= t.Total) EndLine();
        }
        else
        {
            long decile = (long)(frac * 10);
            if (decile != _lastDecile || secs - _lastLine > 15 || t.Done >= t.Total)
            {
                if (decile == _lastDecile && t.Done < t.Total && secs - _lastLine <= 15) return;
                Console.Error.WriteLine(line);
                _lastDecile = decile;
                _lastLine = secs;
            }
        }
    }

    /// <summary>Ends the current line; the next report starts a stage of its own (clock and ETA from zero).</summary>
    public void EndLine()
    {
        lock (_clock)
        {
            if (_open) Console.Error.WriteLine();
            _open = false;
            _ended = true;
        }
    }

    public static string Format(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:00}m" : t.TotalMinutes >= 1 ? $"{(int)t.TotalMinutes}m{t.Seconds:00}s" : $"{t.TotalSeconds:0.0}s";

    public static void Status(string message)
    {
        if (!Quiet) Console.Error.WriteLine(message);
    }
}

/// <summary>A plain text table with aligned columns (numbers right-aligned).</summary>
public sealed class TextTable(params string[] headers)
{
    private readonly List<string[]> _rows = [];

    public TextTable Add(params object?[] cells)
    {
        _rows.Add(cells.Select(c => c switch
        {
            null => "",
            double d => d.ToString("G6", System.Globalization.CultureInfo.InvariantCulture),
            IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
            _ => c.ToString() ?? "",
        }).ToArray());
        return this;
    }

    public override string ToString()
    {
        int n = headers.Length;
        var widths = Enumerable.Range(0, n).Select(i => Math.Max(headers[i].Length, _rows.Count == 0 ? 0 : _rows.Max(r => i < r.Length ? r[i].Length : 0))).ToArray();
        bool[] numeric = Enumerable.Range(0, n).Select(i => _rows.Count > 0 && _rows.All(r => i >= r.Length || r[i].Length == 0 || IsNumber(r[i]))).ToArray();
        var sb = new StringBuilder();
        string Sep() => "+" + string.Join("+", widths.Select(w => new string('-', w + 2))) + "+";
        string Row(string[] cells) => "|" + string.Join("|", Enumerable.Range(0, n).Select(i =>
        {
            string c = i < cells.Length ? cells[i] : "";
            return " " + (numeric[i] ? c.PadLeft(widths[i]) : c.PadRight(widths[i])) + " ";
        })) + "|";
        sb.AppendLine(Sep()).AppendLine(Row(headers)).AppendLine(Sep());
        foreach (var r in _rows) sb.AppendLine(Row(r));
        sb.Append(Sep());
        return sb.ToString();
    }

    private static bool IsNumber(string s) => double.TryParse(s.TrimEnd('%', 'x', 's').Replace(",", ""), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out _);
}
