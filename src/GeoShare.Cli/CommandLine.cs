using System.Globalization;

namespace GeoShare.Cli;

/// <summary>One option of a command: <c>--name VALUE</c>, or a flag when <see cref="ValueName"/> is null.</summary>
/// <summary>
/// One option of a command: <c>--name VALUE</c>, or a flag when <see cref="ValueName"/> is null. <see cref="Default"/> is
/// the value used when the option is absent; <see cref="DefaultNote"/> only describes, in the help, what happens then.
/// </summary>
public sealed record OptionSpec(string Name, string? ValueName, string Help, string? Default = null, bool Required = false, string? DefaultNote = null);

/// <summary>A command's name, summary, options and examples; parses its arguments.</summary>
public sealed class CommandSpec(string name, string summary, IReadOnlyList<OptionSpec> options, IReadOnlyList<string> examples)
{
    public string Name { get; } = name;
    public string Summary { get; } = summary;
    public IReadOnlyList<OptionSpec> Options { get; } = options;
    public IReadOnlyList<string> Examples { get; } = examples;

    /// <summary>Library parameters that this command takes from an option of another name (e.g. demo: method → --baseline).</summary>
    public IReadOnlyDictionary<string, string> ParameterOptions { get; init; } = new Dictionary<string, string>();

    /// <summary>Library parameters whose option has another name in every command that has the option.</summary>
    private static readonly Dictionary<string, string> RenamedParameters = new()
    {
        ["blocks"] = "--params",
        ["shared_types"] = "--share",
        ["unique_blocks"] = "--unique",
    };

    /// <summary>
    /// The option a library parameter (<see cref="UsageException.Parameter"/>) came from: this command's mapping, else
    /// the renamed or same-named option (snake_case to kebab-case) when the command has it, else the parameter itself.
    /// </summary>
    public string OptionFor(string parameter)
    {
        if (ParameterOptions.TryGetValue(parameter, out var mapped)) return mapped;
        string option = RenamedParameters.TryGetValue(parameter, out var renamed) ? renamed : "--" + parameter.Replace('_', '-');
        return Options.Any(o => o.Name == option) ? option : parameter;
    }

    public string HelpText()
    {
        var w = new StringWriter();
        w.WriteLine($"geoshare {Name}: {Summary}");
        w.WriteLine();
        w.WriteLine("Options:");
        int width = Options.Max(o => Label(o).Length) + 2;
        foreach (var o in Options)
        {
            string extra = o.Required ? " (required)" : (o.Default ?? o.DefaultNote) is { } d ? $" (default: {d})" : "";
            w.WriteLine($"  {Label(o).PadRight(width)}{o.Help}{extra}");
        }
        w.WriteLine($"  {"--help".PadRight(width)}show this help");
        w.WriteLine();
        w.WriteLine("Examples:");
        foreach (var e in Examples) w.WriteLine($"  {e}");
        w.WriteLine();
        w.WriteLine("Exit codes: 0 ok, 2 usage error, 3 bad input (file or data), 4 numerical failure, 1 internal error.");
        return w.ToString();
    }

    private static string Label(OptionSpec o) => o.ValueName is null ? o.Name : $"{o.Name} {o.ValueName}";

    public ParsedArgs Parse(IReadOnlyList<string> args)
    {
        var values = new Dictionary<string, string>();
        var flags = new HashSet<string>();
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            string? inline = null;
            int eq = a.IndexOf('=');
            if (a.StartsWith("--") && eq > 0) { inline = a[(eq + 1)..]; a = a[..eq]; }
            var spec = Options.FirstOrDefault(o => o.Name == a);
            if (spec is null)
            {
                string near = EditDistance.Closest(Options.Select(o => o.Name), a, 1).First();
                throw new UsageException(a.StartsWith('-')
                    ? $"unknown option '{BoundedFile.Quote(a)}' for 'geoshare {Name}' (did you mean {near}? see geoshare {Name} --help)"
                    : $"unexpected argument '{BoundedFile.Quote(a)}' for 'geoshare {Name}' (see geoshare {Name} --help)");
            }
            if (spec.ValueName is null)
            {
                if (inline is not null) throw new UsageException($"{BoundedFile.Quote(a)} takes no value");
                flags.Add(a);
                continue;
            }
            string? value = inline;
            if (value is null)
            {
                if (i + 1 >= args.Count || (args[i + 1].StartsWith("--") && args[i + 1].Length > 2))
                    throw new UsageException($"{a} needs a value ({spec.ValueName})");
                value = args[++i];
            }
            if (values.ContainsKey(a)) throw new UsageException($"{a} given twice");
            values[a] = value;
        }
        foreach (var o in Options.Where(o => o.Required && !values.ContainsKey(o.Name)))
            throw new UsageException($"missing required option {o.Name} {o.ValueName} (see geoshare {Name} --help)");
        return new ParsedArgs(values, flags, Options);
    }
}

/// <summary>Typed access to parsed options; conversion errors name the option.</summary>
public sealed class ParsedArgs(Dictionary<string, string> values, HashSet<string> flags, IReadOnlyList<OptionSpec> specs)
{
    /// <summary>Whether the command has this option at all.</summary>
    public bool Defines(string name) => specs.Any(s => s.Name == name);
    public bool Has(string name) => values.ContainsKey(name) || flags.Contains(name);
    public bool Flag(string name) => flags.Contains(name);

    public string? String(string name) => values.TryGetValue(name, out var v) ? v : specs.First(s => s.Name == name).Default;
    public string Required(string name) => String(name) ?? throw new UsageException($"missing required option {name}");

    public int Int(string name, int? min = null)
    {
        string v = Required(name);
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i))
            throw new UsageException($"{name}: expected an integer, got '{BoundedFile.Quote(v)}'");
        if (min is not null && i < min) throw new UsageException($"{name}: must be at least {min}, got {i}");
        return i;
    }

    public int? OptionalInt(string name, int? min = null) => String(name) is null ? null : Int(name, min);

    public double Double(string name, double? min = null, double? max = null)
    {
        string v = Required(name);
        if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) || !double.IsFinite(d))
            throw new UsageException($"{name}: expected a number, got '{BoundedFile.Quote(v)}'");
        if ((min is not null && d < min) || (max is not null && d > max))
            throw new UsageException($"{name}: " + (min is null ? $"must be at most {Text(max!.Value)}" : max is null ? $"must be at least {Text(min.Value)}"
                : $"must be within [{Text(min.Value)}, {Text(max.Value)}]") + $", got {v}");
        return d;
    }

    private static string Text(double v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>A compression ratio: the fraction removed, within (0, 1) in every command.</summary>
    public double Ratio(string name)
    {
        double r = Double(name);
        if (!(r > 0 && r < 1)) throw new UsageException($"{name}: must be within (0, 1), got {Required(name)}");
        return r;
    }

    /// <summary>Refuses <paramref name="option"/> where it would be ignored: <paramref name="why"/> says when it applies.</summary>
    public void RefuseUnless(bool applies, string option, string why)
    {
        if (!applies && Has(option)) throw new UsageException($"{option} {why}");
    }

    /// <summary>A comma-separated list that, when the option is given, must name something.</summary>
    public IReadOnlyList<string> NonEmptyList(string name, string whenLeftOut)
    {
        var list = List(name);
        if (values.ContainsKey(name) && list.Count == 0) throw new UsageException($"{name}: empty list (leave {name} out for {whenLeftOut})");
        return list;
    }

    public string Choice(string name, params string[] allowed)
    {
        string v = Required(name);
        if (!allowed.Contains(v)) throw new UsageException($"{name}: expected one of {string.Join(", ", allowed)}, got '{BoundedFile.Quote(v)}'");
        return v;
    }

    public IReadOnlyList<string> List(string name) =>
        String(name) is { } v ? v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : [];

    public IReadOnlyList<double> DoubleList(string name) => List(name).Select(s =>
        double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d)
            ? d : throw new UsageException($"{name}: expected numbers separated by commas, got '{BoundedFile.Quote(s)}'")).ToList();
}
