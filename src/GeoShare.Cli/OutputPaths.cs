namespace GeoShare.Cli;

/// <summary>How a command writes an output path.</summary>
public enum OutputKind
{
    /// <summary>One file (--json, plan --out), written under a temporary name and renamed.</summary>
    File,
    /// <summary>A folder written whole and renamed into place, replacing what was there (compress --out).</summary>
    Folder,
    /// <summary>A folder that named files are added to (--plots).</summary>
    FilesIn,
}

/// <summary>
/// Checks every output path against every input and every other output before any work starts, on canonical paths
/// (absolute, trailing separators dropped, symlinks resolved): an output never overwrites, replaces or lands inside an
/// input, and no output overwrites another.
/// </summary>
public static class OutputPaths
{
    public static void Check(ParsedArgs a, IEnumerable<(string Option, OutputKind Kind)> outputs, IEnumerable<(string Option, string? Path)> inputs)
    {
        var ins = inputs.Where(i => !string.IsNullOrEmpty(i.Path)).Select(i => (i.Option, Given: i.Path!, Canonical: PathIdentity.Canonical(i.Path!))).ToList();
        var outs = new List<(string Option, string Given, string Canonical, OutputKind Kind)>();
        foreach (var (option, kind) in outputs)
        {
            if (!a.Defines(option) || a.String(option) is not { } given) continue;
            if (given.Length == 0) throw new UsageException($"{option}: empty path");
            outs.Add((option, given, PathIdentity.Canonical(given), kind));
        }
        foreach (var o in outs)
        {
            string label = $"{o.Option} {o.Given}";
            bool isDir = Directory.Exists(o.Canonical), exists = isDir || System.IO.File.Exists(o.Canonical);
            if (o.Kind == OutputKind.File && isDir) throw new UsageException($"{label} is a folder; give a file name");
            if (o.Kind != OutputKind.File && exists && !isDir) throw new UsageException($"{label} is a file, not a folder; give a folder name");
            if (o.Kind == OutputKind.File && exists && !BoundedFile.IsRegular(o.Canonical))
                throw new UsageException($"{label} is not a regular file (a device or pipe); give a file name");
            foreach (var i in ins)
            {
                string input = $"{i.Option} {i.Given}";
                if (o.Canonical == i.Canonical) throw new UsageException($"{label} would overwrite an input ({input})");
                if (PathIdentity.IsWithin(o.Canonical, i.Canonical) && Directory.Exists(i.Canonical))
                    throw new UsageException($"{label} would write inside an input folder ({input})");
                if (o.Kind == OutputKind.Folder && PathIdentity.IsWithin(i.Canonical, o.Canonical))
                    throw new UsageException($"{label} holds an input ({input}); an output folder may not contain an input");
            }
            foreach (var p in outs.Where(p => !ReferenceEquals(p.Option, o.Option) && p.Option != o.Option))
            {
                if (p.Canonical == o.Canonical) throw new UsageException($"{label} and {p.Option} {p.Given} are the same path");
                if (o.Kind == OutputKind.Folder && PathIdentity.IsWithin(p.Canonical, o.Canonical))
                    throw new UsageException($"{p.Option} {p.Given} lies inside {label}, which is written as a whole; put it elsewhere");
            }
        }
    }
}
