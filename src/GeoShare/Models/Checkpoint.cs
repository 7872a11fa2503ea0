using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Models;

/// <summary>
/// A Hugging Face model folder: config.json plus model.safetensors, or model.safetensors.index.json and the
/// shards it names. Every file is opened and validated up front.
/// </summary>
public sealed class Checkpoint
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    /// <summary>
    /// The file that marks a GeoShare-compressed folder (its sharing plan; GeoShare.Sharing writes and reads such
    /// folders). Declared here so that dense loading can refuse one without depending on Sharing.
    /// </summary>
    public const string GeoSharePlanFile = "geoshare_plan.json";

    public static bool IsGeoShareCompressed(string dir) => File.Exists(Path.Combine(dir, GeoSharePlanFile));

    public string Dir { get; }
    public ModelConfig Config { get; }
    private readonly Dictionary<string, SafetensorsFile> _fileOf;

    private Checkpoint(string dir, ModelConfig config, Dictionary<string, SafetensorsFile> fileOf)
    {
        Dir = dir;
        Config = config;
        _fileOf = fileOf;
    }

    public IEnumerable<string> TensorNames => _fileOf.Keys;
    public bool Contains(string name) => _fileOf.ContainsKey(name);
    public SafetensorsEntry Entry(string name) => _fileOf[name].Entries[name];
    public string FileOf(string name) => _fileOf[name].Path;
    public Tensor Read(string name, ScalarType dtype) => _fileOf[name].Read(name, dtype);

    /// <summary>
    /// The dtype the checkpoint stores its weights in: that of its floating-point tensors (the one holding the most
    /// elements where they differ), e.g. Float16 for the bundled GPT-2. A compressed copy is saved in it by default.
    /// </summary>
    public ScalarType StorageDType =>
        TensorNames.Select(Entry).Where(e => SafetensorsFile.IsFloat(e.DType)).GroupBy(e => e.DType)
            .OrderByDescending(g => g.Sum(e => e.Elements)).ThenBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => SafetensorsFile.ScalarTypeOf(g.Key)).DefaultIfEmpty(ScalarType.Float32).First();

    public static Checkpoint Open(string dir)
    {
        FileLinks.CheckLink(Path.Combine(dir, "config.json")); // a config.json link loop is named as such, not "missing"
        var config = ModelConfig.Load(dir);
        var fileOf = new Dictionary<string, SafetensorsFile>();
        string index = Path.Combine(dir, IndexFile);
        string single = Path.Combine(dir, SingleFile);
        if (FileLinks.ExistsOrIsLink(index))
        {
            FileLinks.CheckLink(index);
            var map = ReadWeightMap(index);
            var shards = new Dictionary<string, SafetensorsFile>();
            foreach (var shardName in map.Values.Distinct().Order())
            {
                string shardPath = Path.Combine(dir, shardName);
                if (!FileLinks.ExistsOrIsLink(shardPath)) throw BadInputException.For(shardPath, $"shard listed in {IndexFile} is missing");
                shards[shardName] = SafetensorsFile.Open(shardPath);
            }
            foreach (var (tensor, shardName) in map)
            {
                var shard = shards[shardName];
                if (!shard.Entries.ContainsKey(tensor))
                    throw BadInputException.For(shard.Path, $"{IndexFile} places tensor '{tensor}' in this shard, but the shard does not hold it");
                fileOf[tensor] = shard;
            }
        }
        else if (FileLinks.ExistsOrIsLink(single))
        {
            var file = SafetensorsFile.Open(single);
            foreach (var name in file.Entries.Keys) fileOf[name] = file;
        }
        else
        {
            throw BadInputException.For(dir, $"no weights: expected {SingleFile} or {IndexFile}");
        }
        return new Checkpoint(dir, config, fileOf);
    }

    private static Dictionary<string, string> ReadWeightMap(string index)
    {
        try
        {
            using var doc = JsonDocument.Parse(BoundedFile.ReadAllText(index, BoundedFile.JsonLimit, "index file"));
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw BadInputException.For(index, "missing 'weight_map' (an object of tensor name to shard file)");
            var map = new Dictionary<string, string>();
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw BadInputException.For(index, $"weight_map entry for '{BoundedFile.Quote(p.Name)}' must be a file name (a string), got {BoundedFile.Quote(p.Value.GetRawText(), 40)}");
                string file = p.Value.GetString() ?? "";
                if (file.Length == 0 || file.Length > 255 || file.Any(char.IsControl) || file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                    throw BadInputException.For(index, $"weight_map entry for '{BoundedFile.Quote(p.Name)}' is not a plain file name ('{BoundedFile.Quote(file, 40)}')");
                map[p.Name] = file;
            }
            if (map.Count == 0) throw BadInputException.For(index, "weight_map is empty");
            return map;
        }
        catch (JsonException e)
        {
            throw BadInputException.For(index, $"not valid JSON ({BoundedFile.JsonProblem(e)})");
        }
    }
}

/// <summary>Where a model's constructor takes its tensors from: a checkpoint, or a seeded random init (small test models).</summary>
public abstract class TensorSource
{
    public ScalarType DType { get; }
    protected TensorSource(ScalarType dtype) => DType = dtype;

    /// <summary>The tensor named as in the checkpoint, with exactly the given shape.</summary>
    public abstract Tensor Take(string name, params long[] shape);

    /// <summary>Like <see cref="Take"/>, for tensors that initialise to ones (norm weights).</summary>
    public virtual Tensor TakeOnes(string name, params long[] shape) => Take(name, shape);

    public virtual Tensor TakeZeros(string name, params long[] shape) => Take(name, shape);

    public virtual bool Has(string name) => true;
}

/// <summary>Reads tensors from a checkpoint, checking shape and finiteness and recording which were used.</summary>
public sealed class CheckpointTensorSource(Checkpoint checkpoint, ScalarType dtype) : TensorSource(dtype)
{
    private readonly HashSet<string> _used = [];
    public IReadOnlyCollection<string> Used => _used;

    public override bool Has(string name) => checkpoint.Contains(name);

    public override Tensor Take(string name, params long[] shape)
    {
        if (!checkpoint.Contains(name))
            throw BadInputException.For(checkpoint.Dir, $"tensor '{name}' is missing from the checkpoint");
        var entry = checkpoint.Entry(name);
        if (!entry.Shape.SequenceEqual(shape))
            throw BadInputException.For(checkpoint.FileOf(name),
                $"tensor '{name}' has shape {SafetensorsFile.FormatShape(entry.Shape)}, config.json implies {SafetensorsFile.FormatShape(shape)}");
        if (!SafetensorsFile.IsFloat(entry.DType))
            throw BadInputException.For(checkpoint.FileOf(name), $"tensor '{name}' has dtype {entry.DType}; a weight must be F64, F32, F16 or BF16");
        var t = checkpoint.Read(name, DType);
        if (!AllFinite(t))
            throw BadInputException.For(checkpoint.FileOf(name), $"tensor '{name}' contains NaN or infinite values");
        _used.Add(name);
        return t;
    }

    /// <summary>
    /// Whether every element is finite. The sum is NaN or infinite when any element is, and costs no memory; only then
    /// (or if the sum of finite weights overflowed) are the elements checked, a piece at a time. An isfinite mask per
    /// tensor left freed blocks of every size behind: 4 MB more resident after loading compressed GPT-2.
    /// </summary>
    private static bool AllFinite(Tensor t)
    {
        using (var sum = t.sum())
        using (var wide = sum.to_type(ScalarType.Float64))
            if (double.IsFinite(wide.item<double>())) return true;
        const long piece = 1L << 20;
        using var flat = t.reshape(-1);
        for (long start = 0; start < flat.numel(); start += piece)
        {
            // Each temporary named, so none is finalized mid-call (TensorLifetime).
            using var chunk = flat.narrow(0, start, Math.Min(piece, flat.numel() - start));
            using var f = torch.isfinite(chunk);
            using var all = f.all();
            if (!all.item<bool>()) return false;
        }
        return true;
    }
}

/// <summary>Seeded random weights, for models built in tests: normal(0, std) matrices, unit norm weights, zero biases.</summary>
public sealed class RandomTensorSource : TensorSource
{
    private readonly Generator _gen;
    private readonly double _std;

    public RandomTensorSource(long seed, ScalarType dtype = ScalarType.Float64, double std = 0.2) : base(dtype)
    {
        _gen = new Generator((ulong)seed);
        _std = std;
    }

    public override Tensor Take(string name, params long[] shape) =>
        torch.randn(shape, dtype: DType, generator: _gen).MulScalar_(_std);

    // Norm weights near one and small non-zero biases keep every parameter's gradient non-trivial.
    public override Tensor TakeOnes(string name, params long[] shape) =>
        torch.randn(shape, dtype: DType, generator: _gen).MulScalar_(0.1).AddScalar_(1.0);

    public override Tensor TakeZeros(string name, params long[] shape) =>
        torch.randn(shape, dtype: DType, generator: _gen).MulScalar_(0.05);
}
