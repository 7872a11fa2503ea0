using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using GeoShare.Cli;
using GeoShare.Models;
using Xunit.Abstractions;

namespace GeoShare.Tests;

/// <summary>
/// Seeded fuzzing of the files a user hands GeoShare: safetensors headers, model.safetensors.index.json, config.json,
/// tokenizer.json and plan files (types, values, deletions, duplications, truncations) on a tiny GPT-2. Every case
/// must end in success or a one-line error of exit code 2 or 3 (never an internal error or a signal), within a time
/// limit, leaving no file behind. 1,000 cases run in this process through the CLI's own entry (Cli.Run); 50 more as
/// real `geoshare` processes. GEOSHARE_FUZZ_SEED chooses another seed.
/// </summary>
public class FuzzTests(ITestOutputHelper output)
{
    private const int InProcessCases = 1000, ProcessCases = 50;
    private static readonly TimeSpan CaseLimit = TimeSpan.FromSeconds(30);
    private static readonly string[] Targets = ["safetensors", "index", "config", "tokenizer", "plan"];

    private sealed record Case(int Number, string Target, string Mutation, string[] Args, string Dir);

    /// <summary>The pristine inputs each case copies: a single-file and a sharded tiny GPT-2, a compressed one, a plan, text.</summary>
    private sealed class Fixture
    {
        public required string Single, Sharded, Compressed, Plan, Data;
    }

    private static Fixture Build(TempDir tmp)
    {
        string single = TinyModelFolders.Gpt2(tmp, 2, "single");
        string data = TinyModelFolders.Text(tmp, 4_000);
        // The same weights as two shards and an index.
        string sharded = tmp.File("sharded");
        Directory.CreateDirectory(sharded);
        foreach (var f in new[] { "config.json", "tokenizer.json" }) File.Copy(Path.Combine(single, f), Path.Combine(sharded, f));
        var file = SafetensorsFile.Open(Path.Combine(single, Checkpoint.SingleFile));
        var names = file.Entries.Keys.Order(StringComparer.Ordinal).ToList();
        var map = new JsonObject();
        for (int s = 0; s < 2; s++)
        {
            string shard = $"model-0000{s + 1}-of-00002.safetensors";
            var part = names.Where((_, i) => i % 2 == s).ToList();
            SafetensorsFile.Write(Path.Combine(sharded, shard), part.Select(n => (n, file.Read(n))).ToList());
            foreach (var n in part) map[n] = shard;
        }
        File.WriteAllText(Path.Combine(sharded, Checkpoint.IndexFile), new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = 1 }, ["weight_map"] = map }.ToJsonString());
        string compressed = tmp.File("compressed");
        var (code, err) = RunInProcess(["compress", "--model", single, "--data", data, "--ratio", "0.3", "--method", "adjacent", "--calib-windows", "4", "--calib-stride", "1", "--out", compressed]);
        Assert.True(code == 0, err);
        string plan = tmp.File("plan.json");
        File.Copy(Path.Combine(compressed, GeoShare.Sharing.CompressedCheckpoint.PlanFile), plan);
        return new Fixture { Single = single, Sharded = sharded, Compressed = compressed, Plan = plan, Data = data };
    }

    private static readonly object ConsoleGate = new();

    private static (int Code, string Stderr) RunInProcess(string[] args)
    {
        lock (ConsoleGate)
        {
            var err = new StringWriter();
            var (oldErr, oldOut, oldQuiet) = (Console.Error, Console.Out, ConsoleProgress.Quiet);
            try
            {
                Console.SetError(err);
                Console.SetOut(TextWriter.Null);
                ConsoleProgress.Quiet = true;
                int code = GeoShare.Cli.Cli.Run(args);
                return (code, err.ToString());
            }
            finally
            {
                Console.SetError(oldErr);
                Console.SetOut(oldOut);
                ConsoleProgress.Quiet = oldQuiet;
            }
        }
    }

    private static void CopyDir(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }

    /// <summary>Case <paramref name="n"/>: a fresh copy of the inputs with one mutated file, and the command that reads it.</summary>
    private static Case MakeCase(int n, Random rng, Fixture fx, string root)
    {
        string dir = Path.Combine(root, $"case-{n:D4}");
        Directory.CreateDirectory(dir);
        string target = Targets[n % Targets.Length];
        string data = fx.Data;
        string[] Eval(string model) => ["eval", "--model", model, "--data", data, "--limit", "1"];
        switch (target)
        {
            case "safetensors":
            {
                string m = Path.Combine(dir, "m");
                CopyDir(fx.Single, m);
                string mutation = MutateSafetensors(Path.Combine(m, Checkpoint.SingleFile), rng);
                return new Case(n, target, mutation, Eval(m), dir);
            }
            case "index":
            {
                string m = Path.Combine(dir, "m");
                CopyDir(fx.Sharded, m);
                string mutation = MutateJsonFile(Path.Combine(m, Checkpoint.IndexFile), rng);
                return new Case(n, target, mutation, Eval(m), dir);
            }
            case "config":
            case "tokenizer":
            {
                string m = Path.Combine(dir, "m");
                CopyDir(rng.Next(2) == 0 ? fx.Single : fx.Sharded, m);
                string mutation = MutateJsonFile(Path.Combine(m, target + ".json"), rng);
                return new Case(n, target, mutation, Eval(m), dir);
            }
            default:
            {
                if (rng.Next(2) == 0)
                {
                    // The plan inside a compressed folder (it must match the weights' digest).
                    string m = Path.Combine(dir, "m");
                    CopyDir(fx.Compressed, m);
                    string mutation = MutateJsonFile(Path.Combine(m, GeoShare.Sharing.CompressedCheckpoint.PlanFile), rng);
                    return new Case(n, "plan-in-folder", mutation, Eval(m), dir);
                }
                string plan = Path.Combine(dir, "plan.json");
                File.Copy(fx.Plan, plan);
                string mut = MutateJsonFile(plan, rng);
                return new Case(n, "plan-file", mut, ["compress", "--model", fx.Single, "--data", data, "--plan", plan, "--calib-windows", "4", "--calib-stride", "1"], dir);
            }
        }
    }

    // ---------------- mutations ----------------

    private static readonly Func<Random, JsonNode?>[] Values =
    [
        _ => -1, _ => 0, _ => 1, _ => -5, _ => 2, _ => 3, _ => 2147483648L, _ => 99999999999L, _ => 140737488355329L, _ => 4294967296L, _ => 65536,
        _ => 1e308, _ => -1e-300, _ => 0.5, _ => 1e-5, _ => "", _ => "x", _ => "F16", _ => "I64", _ => "BOOL", _ => "tie", _ => "Dense", _ => "../x", _ => "model.safetensors",
        _ => "\u0000\u0001\n", r => new string('z', r.Next(1, 5000)), _ => true, _ => false, _ => null,
        _ => new JsonArray(), _ => new JsonObject(), _ => new JsonArray(1, 2), _ => new JsonArray(4294967296L, 4294967296L, 4294967296L),
        _ => new JsonArray(65536, 140737488355329L), _ => new JsonArray("0", "4"), _ => new JsonObject { ["a"] = 1 },
    ];

    private static JsonNode? RandomValue(Random rng) => Values[rng.Next(Values.Length)](rng);

    /// <summary>Every node with its parent and its key (object) or index (array).</summary>
    private static List<(JsonNode? Node, JsonNode Parent, object Key)> Nodes(JsonNode root)
    {
        var all = new List<(JsonNode?, JsonNode, object)>();
        void Walk(JsonNode node)
        {
            if (node is JsonObject o)
                foreach (var kv in o.ToList()) { all.Add((kv.Value, o, kv.Key)); if (kv.Value is not null) Walk(kv.Value); }
            else if (node is JsonArray a)
                for (int i = 0; i < a.Count; i++) { all.Add((a[i], a, i)); if (a[i] is not null) Walk(a[i]!); }
        }
        Walk(root);
        return all;
    }

    private static string Describe(object key) => key is string s ? $"'{(s.Length > 30 ? s[..30] : s)}'" : $"[{key}]";

    /// <summary>Mutates JSON text: a value's type or value, a deletion, a duplicated key, or a truncation.</summary>
    private static (string Text, string Mutation) MutateJson(string text, Random rng)
    {
        int kind = rng.Next(10);
        if (kind == 0)
        {
            int cut = rng.Next(text.Length);
            return (text[..cut], $"truncated at {cut} of {text.Length}");
        }
        var root = JsonNode.Parse(text)!;
        var nodes = Nodes(root);
        if (nodes.Count == 0) return (text + "x", "appended garbage");
        // Prefer small nodes: the big vocabularies would otherwise take every pick.
        var (node, parent, key) = nodes[rng.Next(rng.Next(3) == 0 ? nodes.Count : Math.Min(nodes.Count, 60))];
        if (kind <= 2)
        {
            if (parent is JsonObject o) o.Remove((string)key); else ((JsonArray)parent).RemoveAt((int)key);
            return (root.ToJsonString(), $"deleted {Describe(key)}");
        }
        if (kind == 3 && parent is JsonObject dup)
        {
            // A duplicated key, written by hand (JsonObject cannot hold one): the copy has another value.
            string name = (string)key;
            string extra = JsonSerializer.Serialize(name) + ":" + (RandomValue(rng)?.ToJsonString() ?? "null") + ",";
            string serialized = root.ToJsonString();
            string marker = Guid.NewGuid().ToString("N");
            dup[marker] = 0;
            serialized = root.ToJsonString();
            int at = serialized.IndexOf(JsonSerializer.Serialize(marker) + ":0", StringComparison.Ordinal);
            serialized = serialized.Remove(at, marker.Length + 4).Insert(at, extra);
            serialized = serialized.Replace(",}", "}").Replace(",,", ",");
            return (serialized, $"duplicated key {Describe(key)}");
        }
        if (kind == 4 && node is not null)
        {
            // Wrong type: the same content as a string, or a number where a string was.
            JsonNode? replaced = node is JsonValue v && v.TryGetValue(out string? _) ? 7 : JsonValue.Create(node.ToJsonString());
            Set(parent, key, replaced);
            return (root.ToJsonString(), $"type of {Describe(key)} changed");
        }
        var value = RandomValue(rng);
        Set(parent, key, value);
        return (root.ToJsonString(), $"{Describe(key)} := {(value?.ToJsonString() is { } t && t.Length > 30 ? t[..30] + "…" : value?.ToJsonString() ?? "null")}");
    }

    private static void Set(JsonNode parent, object key, JsonNode? value)
    {
        if (parent is JsonObject o) o[(string)key] = value;
        else ((JsonArray)parent)[(int)key] = value;
    }

    private static string MutateJsonFile(string path, Random rng)
    {
        var (text, mutation) = MutateJson(File.ReadAllText(path), rng);
        File.WriteAllText(path, text);
        return mutation;
    }

    private static string MutateSafetensors(string path, Random rng)
    {
        var bytes = File.ReadAllBytes(path);
        int len = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        string header = Encoding.UTF8.GetString(bytes, 8, len);
        var dataPart = bytes[(8 + len)..];
        switch (rng.Next(8))
        {
            case 0:
            {
                int cut = rng.Next(bytes.Length);
                File.WriteAllBytes(path, bytes[..cut]);
                return $"file truncated at {cut}";
            }
            case 1:
            {
                ulong[] lengths = [0, 1, (ulong)len + 1, (ulong)len - 1, ulong.MaxValue, 1UL << 40, (ulong)bytes.Length];
                ulong l = lengths[rng.Next(lengths.Length)];
                BinaryPrimitives.WriteUInt64LittleEndian(bytes, l);
                File.WriteAllBytes(path, bytes);
                return $"header length := {l}";
            }
            default:
            {
                var (text, mutation) = MutateJson(header, rng);
                var h = Encoding.UTF8.GetBytes(text);
                var outBytes = new byte[8 + h.Length + dataPart.Length];
                BinaryPrimitives.WriteUInt64LittleEndian(outBytes, (ulong)h.Length);
                h.CopyTo(outBytes, 8);
                dataPart.CopyTo(outBytes, 8 + h.Length);
                File.WriteAllBytes(path, outBytes);
                return "header " + mutation;
            }
        }
    }

    // ---------------- checks ----------------

    private static Dictionary<string, long> Files(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).ToDictionary(f => f, f => new FileInfo(f).Length);

    /// <summary>The outcome class of one finished case, or a failure description.</summary>
    private static string Classify(Case c, int code, string stderr, TimeSpan elapsed, List<string> failures)
    {
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        string what = $"case {c.Number} ({c.Target}: {c.Mutation}): geoshare {string.Join(' ', c.Args.Take(1))} exit {code} in {elapsed.TotalSeconds:F1} s";
        if (elapsed > CaseLimit) failures.Add($"{what}: over the time limit");
        if (code == 0) return "ok";
        if (code is 2 or 3)
        {
            var errors = lines.Where(l => l.Contains(": error: ")).ToList();
            if (errors.Count != 1 || lines.Length != 1) failures.Add($"{what}: not one error line:\n{stderr}");
            else if (errors[0].Length > 600) failures.Add($"{what}: error line of {errors[0].Length} characters");
            else if (errors[0].Any(ch => ch < 0x20 && ch != '\t')) failures.Add($"{what}: control character in the error line");
            return $"exit {code}";
        }
        failures.Add($"{what}:\n{stderr}");
        return $"exit {code}";
    }

    private static int Seed => int.TryParse(Environment.GetEnvironmentVariable("GEOSHARE_FUZZ_SEED"), out int s) ? s : 20261201;

    [Fact]
    public void ThousandMutatedInputsInProcessEndInSuccessOrAOneLineUsageOrInputError()
    {
        using var tmp = new TempDir();
        var fx = Build(tmp);
        int seed = Seed;
        var rng = new Random(seed);
        var counts = new SortedDictionary<string, int>();
        var byTarget = new SortedDictionary<string, int>();
        var failures = new List<string>();
        var clock = Stopwatch.StartNew();
        string cases = tmp.File("cases");
        var before = Files(fx.Single).Concat(Files(fx.Sharded)).Concat(Files(fx.Compressed)).ToDictionary();
        for (int n = 0; n < InProcessCases; n++)
        {
            var c = MakeCase(n, rng, fx, cases);
            var inputs = Files(c.Dir);
            var sw = Stopwatch.StartNew();
            var (code, stderr) = RunInProcess(c.Args);
            string cls = Classify(c, code, stderr, sw.Elapsed, failures);
            counts[cls] = counts.GetValueOrDefault(cls) + 1;
            byTarget[$"{c.Target} {cls}"] = byTarget.GetValueOrDefault($"{c.Target} {cls}") + 1;
            var after = Files(c.Dir);
            if (!after.Keys.ToHashSet().SetEquals(inputs.Keys)) failures.Add($"case {n} ({c.Target}: {c.Mutation}): files changed: {string.Join(", ", after.Keys.Except(inputs.Keys))}");
            Directory.Delete(c.Dir, true);
        }
        Assert.Equal(before, Files(fx.Single).Concat(Files(fx.Sharded)).Concat(Files(fx.Compressed)).ToDictionary());
        Assert.Equal(["cases", "compressed", "plan.json", "sharded", "single", "small.txt"],
            Directory.EnumerateFileSystemEntries(tmp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray());
        string summary = $"fuzz seed {seed}: {InProcessCases} in-process cases in {clock.Elapsed.TotalSeconds:F0} s: " +
                         string.Join(", ", counts.Select(kv => $"{kv.Key}: {kv.Value}")) + "\n  by target: " + string.Join(", ", byTarget.Select(kv => $"{kv.Key}: {kv.Value}"));
        output.WriteLine(summary);
        Console.WriteLine(summary);
        Assert.True(failures.Count == 0, $"{failures.Count} failure(s) (seed {seed}):\n" + string.Join("\n", failures.Take(15)));
        Assert.True(counts.Keys.All(k => k is "ok" or "exit 2" or "exit 3"));
    }

    [Fact]
    public void FiftyMutatedInputsAsRealProcessesEndInSuccessOrAOneLineUsageOrInputError()
    {
        using var tmp = new TempDir();
        var fx = Build(tmp);
        int seed = Seed + 1;
        var rng = new Random(seed);
        var counts = new SortedDictionary<string, int>();
        var failures = new List<string>();
        for (int n = 0; n < ProcessCases; n++)
        {
            var c = MakeCase(n, rng, fx, tmp.File("cases"));
            var inputs = Files(c.Dir);
            var sw = Stopwatch.StartNew();
            var r = GeoshareProcess.Run(c.Args);
            // A signal shows as 128 + its number (e.g. 134 for SIGABRT, 139 for SIGSEGV).
            // Status and progress lines aside, what remains must be the one error line (or nothing).
            var kept = r.Stderr.Split('\n').Where(l => l.Contains("error") || l.Contains("   at ") || l.Contains("Unhandled") || l.Contains("terminate"));
            string cls = Classify(c, r.ExitCode, string.Join("\n", kept), sw.Elapsed, failures);
            counts[cls] = counts.GetValueOrDefault(cls) + 1;
            if (!Files(c.Dir).Keys.ToHashSet().SetEquals(inputs.Keys)) failures.Add($"case {n}: files changed");
            Directory.Delete(c.Dir, true);
        }
        string summary = $"fuzz seed {seed}: {ProcessCases} geoshare processes: " + string.Join(", ", counts.Select(kv => $"{kv.Key}: {kv.Value}"));
        output.WriteLine(summary);
        Console.WriteLine(summary);
        Assert.True(failures.Count == 0, $"{failures.Count} failure(s) (seed {seed}):\n" + string.Join("\n", failures.Take(15)));
    }
}
