using System.Text.Json;
using System.Text.Json.Serialization;

namespace GeoShare;

/// <summary>Machine-readable results: snake_case JSON, written atomically, read back into the record that wrote it.</summary>
public static class JsonOutput
{
    public static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DictionaryKeyPolicy = null,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    public static string Serialize<T>(T value) => JsonSerializer.Serialize(value, Options);

    public static void Write<T>(string path, T value) => AtomicFile.WriteText(path, Serialize(value) + "\n");

    /// <summary>Reads a file written by <see cref="Write{T}"/>; a missing, malformed or mistyped file is one line naming it.</summary>
    public static T Read<T>(string path)
    {
        if (!File.Exists(path)) throw BadInputException.For(path, "missing");
        try
        {
            return JsonSerializer.Deserialize<T>(BoundedFile.ReadAllText(path, BoundedFile.JsonLimit, "JSON file"), Options)
                ?? throw BadInputException.For(path, $"malformed {typeof(T).Name} JSON: null");
        }
        catch (JsonException e)
        {
            // The first sentence says what is wrong; the position comes from the exception's own fields.
            string what = e.Message.Split(". ")[0].Split('\n')[0].TrimEnd('.');
            string where = e.LineNumber is long line ? $" at line {line + 1}{(string.IsNullOrEmpty(e.Path) || e.Path == "$" ? "" : $" ({e.Path})")}" : "";
            throw BadInputException.For(path, $"malformed {typeof(T).Name} JSON{where}: {what}");
        }
    }
}
