using System.Text;
using GeoShare.Models;
using GeoShare.Sharing;

namespace GeoShare.Tests;

/// <summary>Architecture facts live in src/GeoShare/Models, declared once per architecture and registered in <see cref="Architectures"/>.</summary>
public class ArchitectureTests
{
    private static readonly string Library = Repo.Path("src", "GeoShare");
    private static readonly string ModelsFolder = Repo.Path("src", "GeoShare", "Models");

    [Fact]
    public void NoModelTypeLiteralInTheLibraryOutsideModels()
    {
        var types = Architectures.ModelTypes.ToHashSet(StringComparer.Ordinal);
        Assert.NotEmpty(types);
        var files = Directory.EnumerateFiles(Library, "*.cs", SearchOption.AllDirectories)
            .Where(f => !IsUnder(f, ModelsFolder) && !IsUnder(f, Path.Combine(Library, "bin")) && !IsUnder(f, Path.Combine(Library, "obj")))
            .Order(StringComparer.Ordinal).ToList();
        int literals = 0;
        var found = new List<string>();
        foreach (var file in files)
            foreach (var (line, value) in CSharpLiterals.Strings(File.ReadAllText(file)))
            {
                literals++;
                if (types.Contains(value)) found.Add($"{Path.GetRelativePath(Repo.Root, file)}:{line}: \"{value}\"");
            }
        // The scan must have read the library, or it would pass on nothing.
        Assert.True(files.Count >= 20 && literals >= 200, $"scanned {files.Count} files, {literals} literals");
        Assert.True(found.Count == 0,
            "model-type literals outside src/GeoShare/Models (ask the model's Architecture instead):\n" + string.Join("\n", found));
    }

    [Fact]
    public void TheLiteralScannerFindsLiteralsInEveryFormAndSkipsComments()
    {
        const string source = """
            // "in-a-comment"
            /* "in-a-block" */
            var a = "plain";
            var b = @"verb""atim";
            var c = $"{(x ? "in-a-hole" : $"{y}")}tail";
            var d = '"';
            var e = "esc\"aped";
            var f = $@"{{not-a-hole}} {z:F4}";
            """;
        var values = CSharpLiterals.Strings(source).Select(s => s.Value).ToList();
        Assert.Equal(["plain", "verb\"atim", "in-a-hole", "{}", "{}tail", "esc\"aped", "{not-a-hole} {}"], values);
        Assert.Equal(3, CSharpLiterals.Strings(source).First().Line);
    }

    [Fact]
    public void EveryRegisteredArchitectureDeclaresConsistentFacts()
    {
        Assert.Equal(Architectures.All.Count, Architectures.ModelTypes.Distinct().Count());
        foreach (var a in Architectures.All)
        {
            Assert.Same(a, Architectures.Find(a.ModelType));
            Assert.True(typeof(ModelConfig).IsAssignableFrom(a.ConfigType), $"{a}: {a.ConfigType.Name} is not a ModelConfig");
            Assert.NotEmpty(a.ProjectionTypes);
            Assert.Equal(a.ProjectionTypes.Count, a.ProjectionTypes.Distinct().Count());
            Assert.All(a.DefaultSharedTypes, t => Assert.Contains(t, a.ProjectionTypes));
            Assert.False(a.LayerPrefix(0).StartsWith('.') || a.LayerPrefix(0).EndsWith('.'), $"{a}: layer prefix '{a.LayerPrefix(0)}'");
            Assert.NotEqual(a.LayerPrefix(0), a.LayerPrefix(1));
            // What evaluation reads from the config must be there for the declared task.
            var needs = a.Task switch
            {
                ModelTask.CausalLanguageModel => typeof(ICausalLanguageModelConfig),
                ModelTask.ImageClassification => typeof(IImageClassifierConfig),
                ModelTask.SentenceEncoder => typeof(ISentenceEncoderConfig),
                _ => throw new InvalidOperationException($"{a}: no evaluation check for task {a.Task}"),
            };
            Assert.True(needs.IsAssignableFrom(a.ConfigType), $"{a}: task {a.Task}, but {a.ConfigType.Name} does not implement {needs.Name}");
        }
    }

    [Fact]
    public void BuiltModelsTakeTheirSitesAndTaskFromTheirArchitecture()
    {
        foreach (var model in new[] { TinyModels.Gpt2(), TinyModels.Llama(), TinyModels.Vit() })
        {
            var a = model.Architecture;
            Assert.Contains(a, Architectures.All);
            Assert.Equal(a.ModelType, model.Config.ModelType);
            Assert.Equal(a.Task, model.Task);
            Assert.Equal(a.ProjectionTypes.Count * model.Config.NumLayers, model.Sites.Count);
            Assert.All(model.Sites, s => Assert.Equal($"{a.LayerPrefix(s.Layer)}.{s.Type}", s.Name));
            Assert.All(model.Sites, s => Assert.IsAssignableFrom<LinearMap>(model.FindModule(s.Name)));
            foreach (var (tied, source) in a.TiedKeys(model.Config))
                Assert.Equal(TensorStorage.Pointer(model.ParametersByName()[source]),
                    TensorStorage.Pointer(((DenseLinear)model.FindModule(tied[..tied.LastIndexOf('.')])).Weight));
        }
    }

    [Fact]
    public void AnUnknownModelTypeNamesTheRegisteredOnes()
    {
        var e = Assert.Throws<BadInputException>(() => ModelConfig.Parse("""{"model_type": "t5"}""", "config.json"));
        Assert.Equal($"config.json: unsupported model_type 't5' (supported: {string.Join(", ", Architectures.ModelTypes)})", e.Message);
    }

    [Fact]
    public void TheDenseLoaderRefusesACompressedFolderAndModelFolderLoadsADenseOne()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("compressed");
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(Repo.Gpt2, "config.json"), Path.Combine(dir, "config.json"));
        File.WriteAllText(Path.Combine(dir, CompressedCheckpoint.PlanFile), "{}");
        var e = Assert.Throws<BadInputException>(() => ModelLoader.Load(dir));
        Assert.StartsWith($"{dir}: is a GeoShare-compressed model", e.Message);
        Assert.Contains("ModelFolder.Load", e.Message);

        var dense = ModelFolder.Load(Repo.Gpt2);
        Assert.Equal(ModelLoader.Load(Repo.Gpt2).ParameterCount(), dense.ParameterCount());
    }

    private static bool IsUnder(string file, string folder) =>
        Path.GetFullPath(file).StartsWith(Path.GetFullPath(folder) + Path.DirectorySeparatorChar, StringComparison.Ordinal);
}

/// <summary>
/// The string literals of C# source with their line numbers: regular, verbatim and interpolated (holes scanned as
/// code and shown as "{}"), raw; comments and char literals skipped. Enough C# lexing to find literals, no more.
/// </summary>
internal static class CSharpLiterals
{
    public static List<(int Line, string Value)> Strings(string src)
    {
        var found = new List<(int, string)>();
        int i = 0;
        Code(src, ref i, found, inHole: false);
        return found;
    }

    private static int LineOf(string src, int at) => 1 + src.AsSpan(0, at).Count('\n');

    /// <summary>Scans code until the end, or (in an interpolation hole) until its closing brace.</summary>
    private static void Code(string s, ref int i, List<(int, string)> found, bool inHole)
    {
        int depth = 0;
        while (i < s.Length)
        {
            char c = s[i];
            if (c == '/' && At(s, i + 1, '/')) { while (i < s.Length && s[i] != '\n') i++; continue; }
            if (c == '/' && At(s, i + 1, '*')) { int end = s.IndexOf("*/", i + 2, StringComparison.Ordinal); i = end < 0 ? s.Length : end + 2; continue; }
            if (c == '\'') { i++; if (At(s, i, '\\')) i++; i++; while (i < s.Length && s[i] != '\'') i++; i++; continue; }
            if (c == '"' || ((c == '$' || c == '@') && StringStartsAt(s, i)))
            {
                String(s, ref i, found);
                continue;
            }
            if (inHole && c == '{') depth++;
            if (inHole && c == '}' && depth-- == 0) return; // the hole's closing brace, left for the string
            i++;
        }
    }

    private static bool StringStartsAt(string s, int i)
    {
        int j = i;
        while (j < s.Length && (s[j] == '$' || s[j] == '@')) j++;
        return j > i && At(s, j, '"') && (i == 0 || !(char.IsLetterOrDigit(s[i - 1]) || s[i - 1] == '_'));
    }

    private static void String(string s, ref int i, List<(int, string)> found)
    {
        int start = i;
        bool interpolated = false, verbatim = false;
        while (s[i] != '"') { interpolated |= s[i] == '$'; verbatim |= s[i] == '@'; i++; }
        var value = new StringBuilder();
        if (At(s, i + 1, '"') && At(s, i + 2, '"'))
        {
            // Raw string: as many closing quotes as opening ones.
            int n = 0;
            while (At(s, i, '"')) { n++; i++; }
            string close = new('"', n);
            int end = s.IndexOf(close, i, StringComparison.Ordinal);
            if (end < 0) end = s.Length;
            found.Add((LineOf(s, start), s[i..end]));
            i = Math.Min(s.Length, end + n);
            return;
        }
        i++;
        while (i < s.Length)
        {
            char c = s[i];
            if (c == '"')
            {
                if (verbatim && At(s, i + 1, '"')) { value.Append('"'); i += 2; continue; }
                i++;
                break;
            }
            if (!verbatim && c == '\\' && i + 1 < s.Length) { value.Append(s[i + 1]); i += 2; continue; }
            if (interpolated && c == '{')
            {
                if (At(s, i + 1, '{')) { value.Append('{'); i += 2; continue; }
                i++;
                Code(s, ref i, found, inHole: true);
                i++;
                value.Append("{}");
                continue;
            }
            if (interpolated && c == '}' && At(s, i + 1, '}')) { value.Append('}'); i += 2; continue; }
            value.Append(c);
            i++;
        }
        found.Add((LineOf(s, start), value.ToString()));
    }

    private static bool At(string s, int i, char c) => i < s.Length && s[i] == c;
}
