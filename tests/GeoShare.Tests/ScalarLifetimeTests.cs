using System.Reflection;
using System.Reflection.Emit;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using TorchSharp;

namespace GeoShare.Tests;

/// <summary>
/// The rule of <see cref="GeoShare.Scalars"/>: no TorchSharp <see cref="Scalar"/> that nothing keeps alive during the
/// native call (a collection on another thread can finalize it mid-call: the aborts of TensorLifetime's comment). Two
/// ways make one: a number converted implicitly (<c>t.mul(0.5)</c>), and a TorchSharp method that converts a number
/// inside itself (<c>a.add(b)</c> passes alpha = 1). The sources are compiled with Roslyn and every such conversion and
/// call is reported; the second kind is found by reading TorchSharp's own IL for calls to Scalar's implicit operator.
/// </summary>
public class ScalarLifetimeTests
{
    /// <summary>The projects checked, each compiled against the assemblies this test runs with.</summary>
    public static TheoryData<string> Projects => new() { "src/GeoShare", "src/GeoShare.Cli", "bench/GeoShare.Bench", "tests/GeoShare.Tests" };

    [Theory]
    [MemberData(nameof(Projects))]
    public void NoNumberBecomesAScalarThatNothingKeepsAlive(string project)
    {
        var compilation = Compile(project);
        var found = UnheldScalars(compilation);
        Assert.True(found.Count == 0, $"{found.Count} Scalars made without a holder (use GeoShare.Scalars; add(t, Scalars.One)):\n" + string.Join("\n", found));
    }

    /// <summary>The check finds each way (so that an empty result means something).</summary>
    [Fact]
    public void TheCheckFindsEachWayOfMakingAnUnheldScalar()
    {
        const string source = """
            using TorchSharp;
            using static TorchSharp.torch;
            static class Sample
            {
                static void Run(Tensor a, Tensor b, double x, long n)
                {
                    a.mul(x);                           // implicit double → Scalar
                    a.ne(n);                            // implicit long → Scalar
                    a.add(b);                           // alpha = 1 made inside TorchSharp
                    var c = a * 2.0;                    // the operator converts inside
                    using var s = x.ToScalar();
                    a.mul(s);                           // held: not reported
                    a.add(b, s);                        // held: not reported
                }
            }
            """;
        var compilation = CSharpCompilation.Create("Sample", [CSharpSyntaxTree.ParseText(source, path: "Sample.cs")], References(),
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary));
        Assert.Empty(compilation.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error));
        var found = UnheldScalars(compilation);
        Assert.Equal(4, found.Count);
        Assert.Equal([7, 8, 9, 10], found.Select(f => int.Parse(f.Split(':')[1])).Order());
    }

    private static List<string> UnheldScalars(CSharpCompilation compilation)
    {
        var inside = Inside.Value;
        var found = new List<string>();
        foreach (var tree in compilation.SyntaxTrees)
        {
            var model = compilation.GetSemanticModel(tree);
            string Where(SyntaxNode node) => $"{tree.FilePath}:{node.GetLocation().GetLineSpan().StartLinePosition.Line + 1}: {node.ToString().Split('\n')[0].Trim()}";
            foreach (var node in tree.GetRoot().DescendantNodes())
            {
                // (the name in double.NegativeInfinity reports its member access's conversion again)
                if (node is ExpressionSyntax expression && !(node.Parent is MemberAccessExpressionSyntax access && access.Name == node)
                    && model.GetConversion(expression) is { IsUserDefined: true, MethodSymbol: { } conversion }
                    && conversion.ContainingType.ToDisplayString() == "TorchSharp.Scalar")
                    found.Add(Where(expression) + " (implicit Scalar)");
                if (node is InvocationExpressionSyntax or BinaryExpressionSyntax or AssignmentExpressionSyntax
                    && model.GetSymbolInfo(node).Symbol is IMethodSymbol method && inside.Contains(Key(method)))
                    found.Add(Where(node) + $" ({method.Name} makes a Scalar inside TorchSharp)");
            }
        }
        return found;
    }

    private static readonly Lazy<HashSet<string>> Inside = new(MethodsConvertingInside);
    private static readonly Lazy<MetadataReference[]> Assemblies = new(() => ReadReferences().ToArray());

    /// <summary>TorchSharp's public methods whose IL calls Scalar's implicit conversion (so a number becomes an unheld Scalar inside).</summary>
    private static HashSet<string> MethodsConvertingInside()
    {
        var assembly = typeof(Scalar).Assembly;
        Type[] types;
        try { types = assembly.GetTypes(); }
        catch (ReflectionTypeLoadException e) { types = e.Types.Where(t => t is not null).ToArray()!; }
        var keys = new HashSet<string>();
        foreach (var type in types)
            foreach (var method in type.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly))
            {
                byte[]? il;
                try { il = method.GetMethodBody()?.GetILAsByteArray(); }
                catch (Exception) { continue; }
                if (il is null) continue;
                for (int i = 0; i + 4 < il.Length; i++)
                {
                    if (il[i] != OpCodes.Call.Value) continue;
                    MethodBase? callee;
                    try { callee = method.Module.ResolveMethod(BitConverter.ToInt32(il, i + 1)); }
                    catch (Exception) { continue; }   // the byte was an operand, not an opcode
                    if (callee is MethodInfo { Name: "op_Implicit" } m && m.ReturnType == typeof(Scalar))
                    {
                        keys.Add($"{type.FullName}.{method.Name}({string.Join(",", method.GetParameters().Select(p => p.ParameterType.Name))})");
                        break;
                    }
                }
            }
        Assert.Contains("TorchSharp.torch+Tensor.add(Tensor)", keys);   // the scan works
        return keys;
    }

    private static string Key(IMethodSymbol method)
    {
        method = method.ReducedFrom ?? method.OriginalDefinition;
        static string TypeName(INamedTypeSymbol t) => t.ContainingType is { } outer ? $"{TypeName(outer)}+{t.MetadataName}"
            : $"{t.ContainingNamespace.ToDisplayString()}.{t.MetadataName}";
        static string ParameterName(ITypeSymbol t) => t is IArrayTypeSymbol a ? ParameterName(a.ElementType) + "[]" : t.MetadataName;
        return $"{TypeName(method.ContainingType)}.{method.Name}({string.Join(",", method.Parameters.Select(p => ParameterName(p.Type)))})";
    }

    private static CSharpCompilation Compile(string project)
    {
        string dir = Repo.Path(project.Split('/'));
        var files = Directory.GetFiles(dir, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}"))
            // The ONNX classes generated from Export/onnx.proto at build time.
            .Concat(Directory.GetFiles(dir, "Onnx.cs", SearchOption.AllDirectories).Where(f => f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}")).Take(1))
            .Order().ToList();
        var options = CSharpParseOptions.Default.WithLanguageVersion(LanguageVersion.Preview);
        var trees = files.Select(f => CSharpSyntaxTree.ParseText(File.ReadAllText(f), options, path: Path.GetRelativePath(Repo.Path(), f)))
            .Append(CSharpSyntaxTree.ParseText(ImplicitUsings + (project.StartsWith("tests") ? "global using Xunit;" : ""), options, path: "GlobalUsings.cs"));
        var compilation = CSharpCompilation.Create(Path.GetFileName(dir), trees,
            References().Where(r => !string.Equals(Path.GetFileNameWithoutExtension(r.Display), Path.GetFileName(dir), StringComparison.OrdinalIgnoreCase)),
            new CSharpCompilationOptions(project.StartsWith("src/GeoShare.Cli") || project.StartsWith("bench") ? OutputKind.ConsoleApplication : OutputKind.DynamicallyLinkedLibrary,
                allowUnsafe: true, nullableContextOptions: NullableContextOptions.Enable));
        // Bound as the build binds them, or the check would miss calls: every error but the source-generated P/Invokes' is a failure.
        var errors = compilation.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error && d.Id != "CS8795").ToList();
        Assert.True(errors.Count == 0, string.Join("\n", errors.Take(10)));
        return compilation;
    }

    private const string ImplicitUsings = """
        global using System;
        global using System.Collections.Generic;
        global using System.IO;
        global using System.Linq;
        global using System.Net.Http;
        global using System.Threading;
        global using System.Threading.Tasks;

        """;

    /// <summary>The framework's and this test's assemblies (read once for all the compilations).</summary>
    private static MetadataReference[] References() => Assemblies.Value;

    private static IEnumerable<MetadataReference> ReadReferences()
    {
        var platform = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator);
        var local = Directory.GetFiles(AppContext.BaseDirectory, "*.dll");
        return platform.Concat(local)
            .Where(p => p.EndsWith(".dll") && IsManaged(p))
            .GroupBy(Path.GetFileName).Select(g => g.First())
            .Select(p => MetadataReference.CreateFromFile(p));
    }

    private static bool IsManaged(string path)
    {
        try { AssemblyName.GetAssemblyName(path); return true; }
        catch (Exception) { return false; }
    }
}
