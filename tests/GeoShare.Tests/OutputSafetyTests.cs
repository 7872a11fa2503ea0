using System.Diagnostics;
using System.Security.Cryptography;
using GeoShare.Models;
using GeoShare.Sharing;

namespace GeoShare.Tests;

/// <summary>Outputs never destroy inputs: --force, outputs inside inputs or other outputs, locks, interrupts, stale staging folders.</summary>
public class OutputSafetyTests
{
    /// <summary>Every file under <paramref name="dir"/> by relative path, with its SHA-256: inputs must survive byte for byte.</summary>
    public static Dictionary<string, string> Snapshot(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(dir, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));

    private static GeoshareProcess.Result Compress(string model, string data, params string[] extra) =>
        GeoshareProcess.Run(["compress", "--model", model, "--data", data, "--calib-windows", "8", "--calib-stride", "2", "--ratio", "0.3", "--method", "adjacent", .. extra]);

    private static void AssertOneLineUsageError(GeoshareProcess.Result r, string contains, int code = 2)
    {
        Assert.True(r.ExitCode == code, $"exit {r.ExitCode}:\n{r.Stderr}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, "expected one line:\n" + r.Stderr);
        Assert.Contains(contains, lines[0]);
    }

    [Fact]
    public void ForceOnTheFolderThatHoldsTheModelDeletesNothing()
    {
        using var tmp = new TempDir();
        string parent = tmp.File("parent");
        Directory.CreateDirectory(parent);
        string model = TinyModelFolders.Gpt2(tmp, 2, "parent/tiny");
        string data = TinyModelFolders.Text(tmp, name: "parent/data.txt");
        File.WriteAllText(Path.Combine(parent, "notes.txt"), "mine");
        var before = Snapshot(tmp.Path);
        var r = Compress(model, data, "--out", parent, "--force");
        AssertOneLineUsageError(r, "holds an input");
        Assert.DoesNotContain("--force to", r.Stderr); // no advice to force it
        Assert.Equal(before, Snapshot(tmp.Path));
        // The same with a trailing separator and through a symlink.
        AssertOneLineUsageError(Compress(model, data, "--out", parent + "/", "--force"), "holds an input");
        File.CreateSymbolicLink(tmp.File("link"), parent);
        AssertOneLineUsageError(Compress(model, data, "--out", tmp.File("link"), "--force"), "holds an input");
        File.Delete(tmp.File("link"));
        Assert.Equal(before, Snapshot(tmp.Path));
    }

    [Fact]
    public void ForceReplacesOnlyAFolderGeoShareWrote()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        string mine = tmp.File("mine");
        Directory.CreateDirectory(mine);
        File.WriteAllText(Path.Combine(mine, "thesis.tex"), "years of work");
        var before = Snapshot(tmp.Path);
        var r = Compress(model, data, "--out", mine, "--force");
        AssertOneLineUsageError(r, "was not written by GeoShare");
        Assert.Equal(before, Snapshot(tmp.Path));

        // A GeoShare output with the user's file added is not replaced either.
        string outDir = tmp.File("out");
        Assert.Equal(0, Compress(model, data, "--out", outDir).ExitCode);
        File.WriteAllText(Path.Combine(outDir, "extra.txt"), "mine");
        before = Snapshot(tmp.Path);
        AssertOneLineUsageError(Compress(model, data, "--out", outDir, "--force"), "'extra.txt'");
        Assert.Equal(before, Snapshot(tmp.Path));
        File.Delete(Path.Combine(outDir, "extra.txt"));
        var forced = Compress(model, data, "--out", outDir, "--force");
        Assert.True(forced.ExitCode == 0, forced.Stderr);
    }

    [Fact]
    public void PlanAndDataInsideOutAreRefusedBeforeForceDeletesThem()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        string outDir = tmp.File("out");
        Assert.Equal(0, Compress(model, data, "--out", outDir).ExitCode);
        File.Copy(data, Path.Combine(outDir, "tokenizer_config.json")); // a name GeoShare writes, holding the data
        var before = Snapshot(tmp.Path);
        AssertOneLineUsageError(Compress(model, Path.Combine(outDir, "tokenizer_config.json"), "--out", outDir, "--force"), "holds an input");
        AssertOneLineUsageError(GeoshareProcess.Run("compress", "--model", model, "--data", data, "--plan", Path.Combine(outDir, CompressedCheckpoint.PlanFile), "--out", outDir, "--force"), "holds an input");
        Assert.Equal(before, Snapshot(tmp.Path));
    }

    [Fact]
    public void OutputsThatOverlapAreRefusedAtOnce()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        File.WriteAllText(tmp.File("file"), "x");
        var before = Snapshot(tmp.Path);
        var clock = Stopwatch.StartNew();
        AssertOneLineUsageError(Compress(model, data, "--out", tmp.File("out"), "--json", Path.Combine(tmp.File("out"), Checkpoint.SingleFile)), "lies inside --out");
        AssertOneLineUsageError(Compress(model, data, "--out", tmp.File("file")), "is a file, not a folder");
        AssertOneLineUsageError(Compress(model, data, "--out", "/dev/null"), "is a file, not a folder");
        AssertOneLineUsageError(Compress(model, data, "--out", model + "/"), "would overwrite an input");
        AssertOneLineUsageError(Compress(model, data, "--out", Path.Combine(model, "sub")), "inside an input folder");
        AssertOneLineUsageError(GeoshareProcess.Run("eval", "--model", model, "--data", data, "--json", "/dev/null"), "not a regular file");
        AssertOneLineUsageError(GeoshareProcess.Run("plan", "--model", model, "--data", data, "--ratio", "0.3", "--out", tmp.File("p.json"), "--json", tmp.File("p.json")), "are the same path");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), "refused only after work");
        Assert.Equal(before, Snapshot(tmp.Path));
        Assert.False(Directory.Exists(tmp.File("out")));
    }

    [Fact]
    public void ASecondWriterOfTheSameOutGetsAOneLineErrorAtOnce()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        string outDir = tmp.File("out");
        using (OutputLock.Acquire(outDir, "--out " + outDir)) // as a first writer does
        {
            var clock = Stopwatch.StartNew();
            var r = Compress(model, data, "--out", outDir);
            AssertOneLineUsageError(r, "is being written by another geoshare process", code: 3);
            Assert.DoesNotContain("internal error", r.Stderr);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20));
        }
        Assert.False(File.Exists(outDir + ".lock"));
        Assert.Equal(0, Compress(model, data, "--out", outDir).ExitCode);
        Assert.False(File.Exists(outDir + ".lock"));
    }

    [Fact]
    public void StaleStagingOfAKilledRunIsRemovedByTheNextRun()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 2), data = TinyModelFolders.Text(tmp);
        string outDir = tmp.File("out");
        int dead = DeadPid();
        Directory.CreateDirectory($"{outDir}.tmp-{dead}");
        File.WriteAllText(Path.Combine($"{outDir}.tmp-{dead}", Checkpoint.SingleFile), "partial");
        File.WriteAllText(outDir + ".lock", ""); // left by a SIGKILL: its OS lock died with the process
        string live = $"{outDir}.tmp-{Environment.ProcessId}"; // a running process's staging is kept
        Directory.CreateDirectory(live);
        var r = Compress(model, data, "--out", outDir);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.False(Directory.Exists($"{outDir}.tmp-{dead}"));
        Assert.True(Directory.Exists(live));
        Assert.False(File.Exists(outDir + ".lock"));
    }

    private static int DeadPid()
    {
        using var p = Process.Start(new ProcessStartInfo("true"))!;
        p.WaitForExit();
        return p.Id;
    }

    [Theory]
    [InlineData("TERM", 143)]
    [InlineData("INT", 130)]
    public void AnInterruptWhileWritingLeavesNothingBehind(string signal, int code)
    {
        using var tmp = new TempDir();
        string data = TinyModelFolders.Text(tmp);
        var before = Snapshot(tmp.Path);
        string outDir = tmp.File("out");
        string staging = outDir + ".tmp-";
        string dll = Path.Combine(AppContext.BaseDirectory, "GeoShare.Cli.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var x in new[] { dll, "compress", "--model", Repo.Gpt2, "--data", data, "--calib-windows", "8", "--calib-stride", "2", "--ratio", "0.3", "--method", "adjacent", "--out", outDir })
            psi.ArgumentList.Add(x);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        _ = p.StandardOutput.ReadToEndAsync();
        bool sawStaging = false;
        var clock = Stopwatch.StartNew();
        while (!p.HasExited && clock.Elapsed < TimeSpan.FromMinutes(3))
        {
            if (Directory.EnumerateDirectories(tmp.Path).Any(d => d.StartsWith(staging))) { sawStaging = true; break; }
            Thread.Sleep(1);
        }
        Assert.True(sawStaging, "the run ended before its staging folder was seen: " + err.Result);
        using (var kill = Process.Start("kill", $"-{signal} {p.Id}")) kill.WaitForExit();
        Assert.True(p.WaitForExit(TimeSpan.FromSeconds(60)));
        Assert.True(p.ExitCode == code || p.ExitCode == 0, $"exit {p.ExitCode}: {err.Result}");
        // Either the folder was complete before the signal was handled, or nothing of it is left.
        Assert.Empty(Directory.EnumerateFileSystemEntries(tmp.Path).Where(e => Path.GetFileName(e).StartsWith("out.") || Path.GetFileName(e).StartsWith(".out")));
        if (p.ExitCode == code) Assert.False(Directory.Exists(outDir));
        else Assert.True(File.Exists(Path.Combine(outDir, Checkpoint.SingleFile)));
        Assert.Equal(before, Snapshot(tmp.Path).Where(kv => !kv.Key.StartsWith("out")).ToDictionary());
    }

    [Fact]
    public void AnEditedPlanIsRefusedNamingBothFiles()
    {
        using var tmp = new TempDir();
        string model = TinyModelFolders.Gpt2(tmp, 4), data = TinyModelFolders.Text(tmp);
        string outDir = tmp.File("out");
        var r = Compress(model, data, "--out", outDir, "--share", "mlp.c_fc");
        Assert.True(r.ExitCode == 0, r.Stderr);
        string planPath = Path.Combine(outDir, CompressedCheckpoint.PlanFile);
        var plan = SharingPlan.Load(planPath);
        // Same colors and ranks, colors permuted over the layers: the shapes still fit, the model would compute something else.
        var fc = plan.Types["mlp.c_fc"];
        var permuted = plan with { Types = new(plan.Types) { ["mlp.c_fc"] = fc with { Coloring = [0, 1, 1, 0] } } };
        Assert.NotEqual(fc.Coloring, permuted.Types["mlp.c_fc"].Coloring);
        permuted.Save(planPath);
        var e = Assert.Throws<BadInputException>(() => ModelFolder.Load(outDir));
        Assert.Contains(planPath, e.Message);
        Assert.Contains(Path.Combine(outDir, Checkpoint.SingleFile), e.Message);
        var ev = GeoshareProcess.Run("eval", "--model", outDir, "--data", data, "--limit", "1");
        Assert.Equal(3, ev.ExitCode);
        Assert.Contains("does not match", ev.Stderr);

        File.Delete(planPath);
        var missing = Assert.Throws<BadInputException>(() => ModelFolder.Load(outDir));
        Assert.StartsWith(planPath + ": missing", missing.Message);
    }
}
