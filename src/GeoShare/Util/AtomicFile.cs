namespace GeoShare;

/// <summary>Writes files so that a reader never sees a partial one: temporary file, then rename.</summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        if (Directory.Exists(full)) throw BadInputException.For(path, "is a folder; give a file name");
        // Renaming over a device (/dev/null) or a pipe would replace it: only regular files are written.
        if (File.Exists(full) && !BoundedFile.IsRegular(full)) throw BadInputException.For(path, "is not a regular file");
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        // One step: an interrupt waits for it and then removes the temporary file if it is still there.
        PartialOutputs.Step(() =>
        {
            PartialOutputs.Register(tmp);
            try
            {
                using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
                {
                    write(fs);
                }
                File.Move(tmp, full, overwrite: true);
            }
            catch
            {
                if (File.Exists(tmp)) File.Delete(tmp);
                throw;
            }
            finally
            {
                PartialOutputs.Forget(tmp);
            }
        });
    }

    public static void WriteText(string path, string text) =>
        Write(path, s => { using var w = new StreamWriter(s, new System.Text.UTF8Encoding(false)); w.Write(text); });

    public static void WriteBytes(string path, byte[] bytes) => Write(path, s => s.Write(bytes));
}
