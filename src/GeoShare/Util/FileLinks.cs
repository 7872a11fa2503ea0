namespace GeoShare;

/// <summary>
/// Files reached through symbolic links, as in the Hugging Face cache (snapshots/&lt;rev&gt;/model.safetensors →
/// ../../blobs/&lt;sha256&gt;): size and existence are those of the final target; a loop or a dangling link is an error naming the file.
/// </summary>
public static class FileLinks
{
    /// <summary>The file <paramref name="path"/> names, its links followed to the end.</summary>
    public static FileInfo Resolve(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is null)
        {
            if (!info.Exists) throw BadInputException.For(path, Directory.Exists(path) ? "is a folder, not a file" : "file not found");
            return info;
        }
        FileSystemInfo? target;
        try { target = info.ResolveLinkTarget(returnFinalTarget: true); }
        catch (IOException) { throw BadInputException.For(path, "symbolic link loop (the link leads back to itself)"); }
        if (target is null || !target.Exists)
            throw BadInputException.For(path, $"symbolic link to a missing file ({info.LinkTarget})");
        if (target is not FileInfo file) throw BadInputException.For(path, $"symbolic link to a folder ({info.LinkTarget}), not a file");
        return file;
    }

    /// <summary>Where <paramref name="path"/> is a symbolic link, checks that it leads to a file (else an error naming it).</summary>
    public static void CheckLink(string path)
    {
        if (new FileInfo(path).LinkTarget is not null) Resolve(path);
    }

    /// <summary>Whether <paramref name="path"/> exists as a file or as a link (even a broken one), so that a broken link is reported, not skipped.</summary>
    public static bool ExistsOrIsLink(string path) => File.Exists(path) || new FileInfo(path).LinkTarget is not null;
}
