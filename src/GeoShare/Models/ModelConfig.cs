using System.Text.Json;

namespace GeoShare.Models;

/// <summary>A model's config.json, parsed into the record of its architecture (declared in the architecture's file).</summary>
public abstract record ModelConfig
{
    /// <summary>The architecture this config belongs to; it declares the model_type.</summary>
    public abstract Architecture Architecture { get; }

    public string ModelType => Architecture.ModelType;
    public abstract int NumLayers { get; }
    public abstract int HiddenSize { get; }

    /// <summary>The config.json text as read, copied unchanged into compressed checkpoints.</summary>
    public string RawJson { get; init; } = "{}";

    public static ModelConfig Load(string modelDir)
    {
        if (!Directory.Exists(modelDir)) throw BadInputException.For(modelDir, "model folder not found");
        string path = Path.Combine(modelDir, "config.json");
        if (!File.Exists(path)) throw BadInputException.For(path, "missing (a Hugging Face model folder needs config.json)");
        string text = BoundedFile.ReadAllText(path, BoundedFile.JsonLimit, "config file");
        return Parse(text, path);
    }

    public static ModelConfig Parse(string json, string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw BadInputException.For(path, $"not valid JSON ({BoundedFile.JsonProblem(e)})"); }
        using (doc)
        {
            var r = new ConfigReader(doc.RootElement, path);
            string type = r.String("model_type");
            var architecture = Architectures.Find(type)
                ?? throw BadInputException.For(path, $"unsupported model_type '{BoundedFile.Quote(type, 40)}' (supported: {string.Join(", ", Architectures.ModelTypes)})");
            return architecture.ParseConfig(r) with { RawJson = json };
        }
    }
}

/// <summary>Typed access to config.json fields; every failure names the file and the field.</summary>
internal sealed class ConfigReader(JsonElement root, string path)
{
    public JsonElement Root { get; } = root.ValueKind == JsonValueKind.Object ? root : throw BadInputException.For(path, "config is not a JSON object");

    private JsonElement? Get(string key) =>
        Root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public string String(string key) => OptionalString(key) ?? throw BadInputException.For(path, $"missing field '{key}'");
    public int Int(string key) => OptionalInt(key) ?? throw BadInputException.For(path, $"missing field '{key}'");

    public string? OptionalString(string key) => Get(key) is { } v
        ? (v.ValueKind == JsonValueKind.String ? v.GetString() : throw BadInputException.For(path, $"field '{key}' must be a string"))
        : null;

    public int? OptionalInt(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i) || i <= 0)
            throw BadInputException.For(path, $"field '{key}' must be a positive integer, got {BoundedFile.Quote(v.GetRawText(), 40)}");
        return i;
    }

    public double? OptionalDouble(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d) || !double.IsFinite(d))
            throw BadInputException.For(path, $"field '{key}' must be a finite number, got {BoundedFile.Quote(v.GetRawText(), 40)}");
        return d;
    }

    /// <summary>A real-valued field that must be positive (an epsilon, rope_theta): checked here, where it is read.</summary>
    public double? OptionalPositive(string key)
    {
        if (OptionalDouble(key) is not double d) return null;
        if (!(d > 0)) throw BadInputException.For(path, $"field '{key}' must be positive, got {d.ToString(System.Globalization.CultureInfo.InvariantCulture)}");
        return d;
    }

    public bool? OptionalBool(string key) => Get(key) is { } v
        ? (v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw BadInputException.For(path, $"field '{key}' must be true or false"))
        : null;

    /// <summary>Whether the key is written at all, even as null (where absent and null mean different things).</summary>
    public bool Has(string key) => Root.TryGetProperty(key, out _);

    /// <summary>The object under <paramref name="key"/>, or null when absent or null.</summary>
    public JsonElement? OptionalObject(string key) => Get(key) is { } v
        ? (v.ValueKind == JsonValueKind.Object ? v : throw BadInputException.For(path, $"field '{key}' must be an object or null"))
        : null;

    /// <summary>The strings of the array under <paramref name="key"/>, or null when absent or null.</summary>
    public IReadOnlyList<string>? OptionalStrings(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            throw BadInputException.For(path, $"field '{key}' must be an array of strings");
        return v.EnumerateArray().Select(e => e.GetString()!).ToList();
    }

    /// <summary>A refusal naming this config file: <paramref name="problem"/> should name the field.</summary>
    public BadInputException Error(string problem) => BadInputException.For(path, problem);

    public void Require(bool condition, string problem)
    {
        if (!condition) throw BadInputException.For(path, problem);
    }
}
