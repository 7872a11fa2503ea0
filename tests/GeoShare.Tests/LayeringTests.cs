using System.Text.RegularExpressions;

namespace GeoShare.Tests;

/// <summary>
/// The library's dependency rule (README, "Layers"): its folders form a pipeline, and a folder may use only the
/// folders before it. Found by reading the sources: <c>using GeoShare.X</c>, <c>GeoShare.X.</c> and <c>X.</c>
/// qualified names (which resolve inside namespace GeoShare.*).
/// </summary>
public partial class LayeringTests
{
    /// <summary>The folders of src/GeoShare in pipeline order, with their namespaces.</summary>
    public static readonly (string Folder, string Namespace)[] Layers =
    [
        ("Util", "GeoShare"),
        ("Models", "GeoShare.Models"),
        ("Data", "GeoShare.Data"),
        ("Curvature", "GeoShare.Curvature"),
        ("Sharing", "GeoShare.Sharing"),
        ("Planning", "GeoShare.Planning"),
        ("Evaluation", "GeoShare.Evaluation"),
        ("Export", "GeoShare.Export"),
        ("Reporting", "GeoShare.Reporting"),
    ];

    private static string Library => Repo.Path("src", "GeoShare");

    [Fact]
    public void EveryLibraryFolderIsALayerAndEveryFileIsInItsFoldersNamespace()
    {
        var folders = Directory.GetDirectories(Library).Select(Path.GetFileName).Where(f => f is not ("bin" or "obj")).Order().ToList();
        Assert.Equal(Layers.Select(l => l.Folder).Order(), folders);
        Assert.Empty(Directory.GetFiles(Library, "*.cs")); // no file outside a layer
        var wrong = new List<string>();
        foreach (var (folder, ns) in Layers)
            foreach (var file in Directory.GetFiles(Path.Combine(Library, folder), "*.cs", SearchOption.AllDirectories))
            {
                var declared = NamespaceDeclaration().Matches(File.ReadAllText(file)).Select(m => m.Groups[1].Value).ToList();
                if (declared.Count == 0 || declared.Any(d => d != ns))
                    wrong.Add($"{Path.GetRelativePath(Library, file)}: namespace {string.Join(", ", declared)} (expected {ns})");
            }
        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
    }

    [Fact]
    public void EveryFolderUsesOnlyTheFoldersBeforeIt()
    {
        var violations = Violations();
        Assert.True(violations.Count == 0, "dependencies against the layer order " +
            string.Join(" <- ", Layers.Select(l => l.Folder)) + ":\n" + string.Join("\n", violations));
    }

    /// <summary>The scan itself finds each form of reference (so that an empty result means something).</summary>
    [Fact]
    public void TheScanFindsEachFormOfReference()
    {
        Assert.Equal(["Sharing"], References("using GeoShare.Sharing;").Distinct());
        Assert.Equal(["Planning"], References("using static GeoShare.Planning.GeoPlanner;").Distinct());
        Assert.Equal(["Planning"], References("var x = new GeoShare.Planning.PlannerOptions();").Distinct());
        Assert.Equal(["Planning"], References("public Planning.ICoefficientSolver? Coefficients { get; init; }").Distinct());
        Assert.Equal(["Evaluation"], References("int b = Evaluation.Evaluator.DefaultBatchSize(model, 256);").Distinct());
        Assert.Empty(References("// uses Planning.GeoPlanner in a comment"));
        Assert.Empty(References("var s = \"Planning.GeoPlanner in a string\";"));
        Assert.Empty(References("var d = batch.Data.Count; var m = this.Models.Count;"));
        Assert.Empty(References("using GeoShare;"));
    }

    private static List<string> Violations()
    {
        var order = Layers.Select((l, i) => (l.Folder, i)).ToDictionary(x => x.Folder, x => x.i);
        var violations = new List<string>();
        foreach (var (folder, _) in Layers)
            foreach (var file in Directory.GetFiles(Path.Combine(Library, folder), "*.cs", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            {
                var lines = File.ReadAllLines(file);
                for (int n = 0; n < lines.Length; n++)
                    foreach (var used in References(lines[n]).Distinct())
                        if (order[used] > order[folder])
                            violations.Add($"{Path.GetRelativePath(Library, file)}:{n + 1}: {folder} uses {used}: {lines[n].Trim()}");
            }
        return violations;
    }

    /// <summary>The layers (folder names) that one line of code refers to, outside comments and string literals.</summary>
    private static IEnumerable<string> References(string line)
    {
        string code = StringLiteral().Replace(line, "\"\"");
        int comment = code.IndexOf("//", StringComparison.Ordinal);
        if (comment >= 0) code = code[..comment];
        var namespaces = Layers.Skip(1).ToDictionary(l => l.Namespace["GeoShare.".Length..], l => l.Folder);
        foreach (Match m in QualifiedName().Matches(code))
            if (namespaces.TryGetValue(m.Groups[1].Value, out var folder)) yield return folder;
    }

    [GeneratedRegex(@"^\s*namespace\s+([\w.]+)", RegexOptions.Multiline)]
    private static partial Regex NamespaceDeclaration();

    /// <summary>GeoShare.X (in a using or a fully qualified name) or X. not preceded by a member access or identifier.</summary>
    [GeneratedRegex(@"(?:\bGeoShare\.|(?<![\w.]))([A-Z]\w*)(?=\s*[.;])")]
    private static partial Regex QualifiedName();

    [GeneratedRegex("@?\\$?\"(?:[^\"\\\\]|\\\\.)*\"")]
    private static partial Regex StringLiteral();
}
