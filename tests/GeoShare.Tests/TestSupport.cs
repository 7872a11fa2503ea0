using System.Diagnostics;
using System.Reflection;
using Xunit.Sdk;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

// libtorch runs on both cores already; parallel test classes would only contend (and time out together).
[assembly: CollectionBehavior(DisableTestParallelization = true)]
// Each test in a dispose scope, so that no temporary tensor is finalized while libtorch reads it (GeoShare.TensorLifetime).
[assembly: GeoShare.Tests.TensorScopePerTest]

namespace GeoShare.Tests;

/// <summary>Opens a TorchSharp dispose scope before each test and frees its tensors after (see <see cref="TensorLifetime"/>).</summary>
[AttributeUsage(AttributeTargets.Assembly | AttributeTargets.Class | AttributeTargets.Method)]
public sealed class TensorScopePerTestAttribute : BeforeAfterTestAttribute
{
    private static DisposeScope? _scope; // tests run one at a time (CollectionBehavior above)

    public override void Before(MethodInfo methodUnderTest) => _scope = torch.NewDisposeScope();

    public override void After(MethodInfo methodUnderTest)
    {
        _scope?.Dispose();
        _scope = null;
    }
}

public static class Repo
{
    public static string Root { get; } = FindRoot();

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(System.IO.Path.Combine(dir.FullName, "GeoShare.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("repository root (GeoShare.sln) not found above " + AppContext.BaseDirectory);
    }

    public static string Path(params string[] parts) => System.IO.Path.Combine([Root, .. parts]);
    public static string Model(string name) => Path("assets", "models", name);
    public static string Gpt2 => Model("gpt2-kjv-brown");
    public static string Llama => Model("llama-kjv-brown");
    public static string Vit => Model("vit-fashion-mnist");
    public static string Corpus(string split) => Path("assets", "data", "corpus", split + ".txt");
    public static string Reference(string file) => Path("assets", "references", file);
    public const string FashionMnist = "/usr/share/datasets/fashion-mnist";
}

/// <summary>A scratch folder removed when disposed.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("geoshare-test-").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }

    /// <summary>Copies a model folder so that a test can damage the copy.</summary>
    public string CopyModel(string source, string name = "model")
    {
        string dst = File(name);
        Directory.CreateDirectory(dst);
        foreach (var f in Directory.GetFiles(source)) System.IO.File.Copy(f, System.IO.Path.Combine(dst, System.IO.Path.GetFileName(f)));
        return dst;
    }
}

/// <summary>Runs the real `geoshare` program in a child process, as a user would.</summary>
public static class GeoshareProcess
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Result Run(params string[] args) => Run(new Dictionary<string, string>(), args);

    /// <summary>With these environment variables set (or replaced) for the child.</summary>
    public static Result Run(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        string dll = System.IO.Path.Combine(AppContext.BaseDirectory, "GeoShare.Cli.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Repo.Root };
        foreach (var (k, v) in environment) psi.Environment[k] = v;
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(10))) { p.Kill(true); throw new TimeoutException("geoshare " + string.Join(' ', args)); }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}

public static class TensorAssert
{
    public static double RelativeError(Tensor actual, Tensor expected)
    {
        using var _ = torch.no_grad();
        var a = actual.to_type(ScalarType.Float64);
        var e = expected.to_type(ScalarType.Float64);
        return a.sub(e).norm().item<double>() / e.norm().item<double>();
    }
}
