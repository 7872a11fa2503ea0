using System.Runtime.InteropServices;
using System.Text;

namespace GeoShare;

/// <summary>
/// Reads input files as regular files up to a stated size, so that a device (/dev/zero), a pipe or a huge file is
/// refused by name instead of being read until memory runs out.
/// </summary>
public static class BoundedFile
{
    /// <summary>Largest text data file read (a corpus to tokenize): 256 MiB.</summary>
    public const long TextLimit = 256L << 20;
    /// <summary>Largest JSON file read (config, tokenizer, index, plan): 128 MiB.</summary>
    public const long JsonLimit = 128L << 20;

    [StructLayout(LayoutKind.Sequential, Size = 256)]
    private struct Statx
    {
        public uint Mask, BlockSize;
        public ulong Attributes;
        public uint Links, Uid, Gid;
        public ushort Mode;
    }

    [DllImport("libc", EntryPoint = "statx", SetLastError = true)]
    private static extern int StatxCall(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, out Statx result);

    private const int AtFdCwd = -100;
    private const uint StatxType = 1;
    private const ushort TypeMask = 0xF000, RegularType = 0x8000;

    /// <summary>Whether <paramref name="path"/> (following symlinks) is a regular file; true where the OS cannot say.</summary>
    public static bool IsRegular(string path)
    {
        if (!OperatingSystem.IsLinux()) return !Directory.Exists(path);
        try
        {
            if (StatxCall(AtFdCwd, path, 0, StatxType, out var st) != 0) return File.Exists(path);
            return (st.Mode & TypeMask) == RegularType;
        }
        catch (EntryPointNotFoundException) { return File.Exists(path); }
        catch (DllNotFoundException) { return File.Exists(path); }
    }

    /// <summary>The whole file, refused (naming it) when it is not a regular file or is larger than <paramref name="limit"/> bytes.</summary>
    public static byte[] ReadAllBytes(string path, long limit, string what = "file")
    {
        if (Directory.Exists(path)) throw BadInputException.For(path, $"is a folder, expected a {what}");
        if (!File.Exists(path)) throw BadInputException.For(path, $"{what} not found");
        if (!IsRegular(path)) throw BadInputException.For(path, $"is not a regular file (a device or pipe); give a {what} on disk");
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long length = fs.Length;
        if (length > limit) throw BadInputException.For(path, $"{what} of {length:N0} bytes is larger than the limit of {limit:N0} bytes");
        var bytes = new byte[length];
        fs.ReadExactly(bytes);
        return bytes;
    }

    /// <summary>The file as UTF-8 text (BOM skipped), within <paramref name="limit"/> bytes; invalid UTF-8 is refused by name.</summary>
    public static string ReadAllText(string path, long limit, string what = "file")
    {
        var bytes = ReadAllBytes(path, limit, what);
        int start = bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF ? 3 : 0;
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes, start, bytes.Length - start); }
        catch (DecoderFallbackException) { throw BadInputException.For(path, "not valid UTF-8 text"); }
    }

    /// <summary>
    /// At most <paramref name="max"/> characters of <paramref name="text"/> for an error line: control and non-ASCII
    /// characters escaped (\n, \u0000), "…" where cut.
    /// </summary>
    public static string Quote(string text, int max = 80)
    {
        var sb = new StringBuilder();
        foreach (char c in text)
        {
            if (sb.Length >= max) { sb.Append('…'); break; }
            sb.Append(c switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '\\' => "\\\\",
                _ when c < 0x20 || c > 0x7E => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        }
        return sb.ToString();
    }

    /// <summary>
    /// A message as one short line, whatever it quotes: control characters escaped, and any run of more than 160
    /// characters without a space (a value echoed from a file) cut to 80. The last guard before an error is printed.
    /// </summary>
    public static string OneLine(string message)
    {
        var words = message.Split(' ');
        for (int i = 0; i < words.Length; i++)
        {
            string w = words[i];
            if (w.Any(c => c < 0x20 || c == 0x7F)) w = string.Concat(w.Select(c => c < 0x20 || c == 0x7F ? $"\\u{(int)c:x4}" : c.ToString()));
            words[i] = w.Length > 160 ? w[..80] + "…" : w;
        }
        return string.Join(' ', words);
    }

    /// <summary>A JSON parser's complaint for an error line: its first sentence and position, quoted short and escaped.</summary>
    public static string JsonProblem(System.Text.Json.JsonException e)
    {
        string what = e.Message.Split(". ")[0].Split('\n')[0].TrimEnd('.');
        string where = e.LineNumber is long line ? $" at line {line + 1}" + (e.BytePositionInLine is long col ? $", byte {col + 1}" : "") : "";
        return Quote(what, 120) + where;
    }

    /// <summary>The first bytes of <paramref name="bytes"/> as a quoted, escaped excerpt (see <see cref="Quote"/>).</summary>
    public static string Quote(ReadOnlySpan<byte> bytes, int max = 80)
    {
        var head = bytes[..Math.Min(bytes.Length, max * 4)];
        return Quote(Encoding.UTF8.GetString(head), max);
    }
}
