using System.Security.Cryptography;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Sharing;

namespace GeoShare.Tests;

/// <summary>A model folder laid out as the Hugging Face cache lays it: every file a relative symbolic link into blobs/.</summary>
public class HubCacheTests
{
    private const string Revision = "0123456789abcdef0123456789abcdef01234567";

    /// <summary>
    /// models--geoshare--{name}/blobs/&lt;sha256&gt; holding the files of <paramref name="source"/>, snapshots/&lt;rev&gt;/&lt;file&gt;
    /// → ../../blobs/&lt;sha256&gt;, refs/main = &lt;rev&gt;; returns the snapshot folder (what a user passes as --model).
    /// </summary>
    public static string Build(TempDir tmp, string source, string name)
    {
        string root = tmp.File($"models--geoshare--{name}");
        string blobs = Path.Combine(root, "blobs"), snapshot = Path.Combine(root, "snapshots", Revision);
        Directory.CreateDirectory(blobs);
        Directory.CreateDirectory(snapshot);
        Directory.CreateDirectory(Path.Combine(root, "refs"));
        File.WriteAllText(Path.Combine(root, "refs", "main"), Revision);
        foreach (var f in Directory.GetFiles(source))
        {
            string sha;
            using (var s = File.OpenRead(f)) sha = Convert.ToHexStringLower(SHA256.HashData(s));
            string blob = Path.Combine(blobs, sha);
            if (!File.Exists(blob)) File.Copy(f, blob);
            File.CreateSymbolicLink(Path.Combine(snapshot, Path.GetFileName(f)), Path.Combine("..", "..", "blobs", sha));
        }
        return snapshot;
    }

    [Fact]
    public void ASnapshotOfSymlinksLoadsEvaluatesAndVerifies()
    {
        using var tmp = new TempDir();
        string snapshot = Build(tmp, Repo.Gpt2, "gpt2-kjv-brown");
        Assert.All(Directory.GetFiles(snapshot), f => Assert.NotNull(new FileInfo(f).LinkTarget));
        Assert.True(new FileInfo(Path.Combine(snapshot, "model-00001-of-00002.safetensors")).Length < 200); // the link, not the shard

        var model = ModelFolder.Load(snapshot);
        Assert.Equal(11_640_320, model.ParameterCount());
        Assert.True(ReferenceCheck.Compare(model, Repo.Reference("gpt2_logits.safetensors")).Matches);

        string data = Repo.Corpus("test");
        var fromCache = GeoshareProcess.Run("eval", "--model", snapshot, "--data", data, "--limit", "2", "--json", tmp.File("cache.json"));
        Assert.True(fromCache.ExitCode == 0, fromCache.Stderr);
        var original = GeoshareProcess.Run("eval", "--model", Repo.Gpt2, "--data", data, "--limit", "2", "--json", tmp.File("original.json"));
        Assert.True(original.ExitCode == 0, original.Stderr);
        Assert.Equal(JsonOutput.Read<EvalOutput>(tmp.File("original.json")).Perplexity, JsonOutput.Read<EvalOutput>(tmp.File("cache.json")).Perplexity);
    }

    [Theory]
    [InlineData("model-00002-of-00002.safetensors")]
    [InlineData("config.json")]
    [InlineData("tokenizer.json")]
    public void ASymlinkLoopIsAnErrorNamingTheFile(string file)
    {
        using var tmp = new TempDir();
        string snapshot = Build(tmp, Repo.Gpt2, "gpt2-kjv-brown");
        string link = Path.Combine(snapshot, file);
        File.Delete(link);
        File.CreateSymbolicLink(link, file); // the file links to itself
        var r = GeoshareProcess.Run("eval", "--model", snapshot, "--data", Repo.Corpus("test"), "--limit", "1");
        Assert.Equal(3, r.ExitCode);
        Assert.Contains(link, r.Stderr);
        Assert.Contains("symbolic link loop", r.Stderr);
        Assert.Single(r.Stderr.Split('\n'), l => l.Contains("error")); // one error line (after the progress lines)
    }

    [Fact]
    public void ALinkToAMissingBlobIsAnErrorNamingTheFile()
    {
        using var tmp = new TempDir();
        string snapshot = Build(tmp, Repo.Gpt2, "gpt2-kjv-brown");
        string shard = Path.Combine(snapshot, "model-00001-of-00002.safetensors");
        File.Delete(new FileInfo(shard).ResolveLinkTarget(true)!.FullName);
        var e = Assert.Throws<BadInputException>(() => ModelFolder.Load(snapshot));
        Assert.StartsWith(shard + ":", e.Message);
        Assert.Contains("missing", e.Message);
    }
}
