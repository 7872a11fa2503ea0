using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Export;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare eval`: perplexity of a language model on a text file, or accuracy of the ViT on Fashion-MNIST.</summary>
public sealed class EvalCommand : ICommand
{
    public CommandSpec Spec { get; } = new("eval", "evaluate a model: perplexity on a text file, or image accuracy",
    [
        CommonOptions.Model,
        new("--data", "FILE", "text file for language models: non-overlapping windows, mean next-token NLL"),
        new("--fashion-mnist", "DIR", "Fashion-MNIST folder for the ViT (t10k split: all 10,000 test images)"),
        new("--sentences", "FILE", "sentence encoders (bert): one sentence per line; the model's embeddings against --against's"),
        new("--against", "DIR", "with --sentences: the reference encoder (e.g. the dense model the compressed one came from)"),
        new("--window", "N", "tokens per window", "256"),
        new("--batch-size", "N", "windows (or images) per forward pass", DefaultNote: "logits under 16 MB (LM) / 50 (ViT)"),
        new("--limit", "N", "evaluate only the first N windows (or images)"),
        new("--memory-warmup", null, "load the model once and free it before measuring what loading adds to the resident set (excludes one-time costs: JIT-compiled code, libtorch kernels, thread pools; bench/memory.sh)"),
        new("--dtype", "TYPE", "element type to compute in: float32, float64 or bfloat16 (weights are converted on load)", "float32"),
        new("--runtime", "NAME", "geoshare (this library, libtorch) or onnx (ONNX Runtime, CPU, on a file of `geoshare export`: --model FILE.onnx)", "geoshare"),
        new("--source", "DIR", "with --runtime onnx: the folder with the tokenizer (or the ViT's preprocessor_config.json)", DefaultNote: "the folder the file was exported from"),
        CommonOptions.Streaming,
        CommonOptions.Threads,
        CommonOptions.Json,
    ],
    [
        "geoshare eval --model assets/models/gpt2-kjv-brown --data assets/data/corpus/test.txt",
        "geoshare eval --model llama-1b-adjacent-30 --data assets/data/corpus/test.txt --limit 8 --streaming on",
        "geoshare eval --model assets/models/llama-kjv-brown --data assets/data/corpus/valid.txt --json llama-valid.json",
        "geoshare eval --model assets/models/vit-fashion-mnist --fashion-mnist /usr/share/datasets/fashion-mnist",
        "geoshare eval --runtime onnx --model gpt2.onnx --data assets/data/corpus/test.txt --threads 2",
        "geoshare eval --model minilm-geo-30 --sentences assets/data/sentences/test.txt --against assets/models/minilm --json e.json",
    ]);

    public int Execute(ParsedArgs a)
    {
        CommonOptions.ApplyThreads(a);
        string modelDir = a.Required("--model");
        string? data = a.String("--data"), fmnist = a.String("--fashion-mnist");
        if (a.Has("--sentences") || a.Has("--against")) return ExecuteEmbeddings(a, modelDir);
        if ((data is null) == (fmnist is null)) throw new UsageException("give exactly one of --data FILE (language models) or --fashion-mnist DIR (ViT)");
        CommonOptions.CheckOutputs(a, ["--model", "--data", "--fashion-mnist"]);
        var dtype = CalibrationOptions.DType(a, allowBFloat16: true);
        int? limit = a.OptionalInt("--limit", min: 1);
        a.RefuseUnless(data is not null, "--window", "applies to language models (--data), not to --fashion-mnist");
        if (data is not null) a.Int("--window", min: 2);
        int? batch = a.Has("--batch-size") ? a.Int("--batch-size", min: 1) : null;

        bool onnx = a.Choice("--runtime", "geoshare", "onnx") == "onnx";
        if (onnx && dtype != torch.ScalarType.Float32) throw new UsageException($"--dtype {a.String("--dtype")}: ONNX Runtime evaluates the exported graph in float32");
        if (onnx && a.Has("--memory-warmup")) throw new UsageException("--memory-warmup is for --runtime geoshare (it loads a model folder)");
        if (!onnx && a.Has("--source")) throw new UsageException("--source is for --runtime onnx (a model folder holds its own tokenizer)");

        string? streamRefusal = onnx ? "--runtime onnx evaluates an exported file" : a.Has("--memory-warmup") ? "--memory-warmup measures a whole loaded model"
            : fmnist is not null ? "the layer-wise path evaluates language models (--data)" : null;
        if (!onnx && File.Exists(Path.Combine(modelDir, "config.json")) && CommonOptions.UseStreaming(a, modelDir, dtype, streamRefusal))
            return ExecuteStreaming(a, modelDir, data!, dtype, limit, batch);
        if (onnx && a.Choice("--streaming", "auto", "on", "off") == "on") throw new UsageException($"--streaming on: {streamRefusal}");

        ConsoleProgress.Status($"loading {modelDir}");
        torch.zeros(1).Dispose(); // libtorch's own code and pools are resident before the model: not the model's
        long? firstLoad = null;
        if (a.Flag("--memory-warmup"))
        {
            // The first load also pages in code that any model needs once; what a second load adds is the model's.
            long start = ResidentMemory.CurrentBytes;
            using (ModelFolder.Load(modelDir, dtype)) firstLoad = ResidentMemory.CurrentBytes - start;
        }
        CollectGarbage();
        long residentBefore = ResidentMemory.CurrentBytes;
        var subject = onnx ? Subject.Onnx(OnnxRuntimeModel.Open(modelDir, torch.get_num_threads()), a.String("--source"), modelDir) : Subject.Library(ModelFolder.Load(modelDir, dtype), modelDir);
        CollectGarbage();
        long residentLoaded = ResidentMemory.CurrentBytes;
        var progress = new ConsoleProgress();
        EvalOutput json;
        TextTable table;
        var task = subject.Config.Architecture.Task;
        if (data is not null)
        {
            if (task != ModelTask.CausalLanguageModel)
                throw new UsageException($"{modelDir} is a {subject.Config.ModelType} image classifier: evaluate it with --fashion-mnist DIR");
            var tokenizer = ByteLevelBpeTokenizer.Load(subject.AssetsDir);
            ConsoleProgress.Status($"tokenizing {data}");
            var windows = TokenWindows.FromFile(data, tokenizer, a.Int("--window", min: 2));
            var selection = limit is int l ? Enumerable.Range(0, Math.Min(l, windows.Count)).ToArray() : null;
            int perPass = batch ?? PretrainedModel.DefaultBatchSize(subject.Config, windows.WindowLength, dtype);
            var s = Evaluator.Perplexity(subject.Forward, subject.Config, subject.Parameters, windows, perPass, progress, selection);
            table = new TextTable("model", "data", "windows", "predicted tokens", "mean NLL", "perplexity", "parameters", "tokens/s", "seconds")
                .Add(modelDir, data, s.Windows, s.PredictedTokens, CommonOptions.Fmt(s.MeanNll, "0.000000"), CommonOptions.Fmt(s.Perplexity),
                     s.Parameters, CommonOptions.Fmt(s.TokensPerSecond, "0"), CommonOptions.Fmt(s.Seconds, "0.0"));
            json = new EvalOutput
            {
                Model = modelDir, ModelType = subject.Config.ModelType, Data = data, Window = windows.WindowLength,
                Windows = s.Windows, PredictedTokens = s.PredictedTokens, MeanNll = s.MeanNll, Perplexity = s.Perplexity,
                Parameters = s.Parameters, ParameterBytes = subject.ParameterBytes, Dtype = subject.Dtype,
                WallSeconds = s.Seconds, TokensPerSecond = s.TokensPerSecond, Threads = torch.get_num_threads(),
                Memory = Memory(residentBefore, residentLoaded, firstLoad), Runtime = subject.Runtime,
            };
        }
        else
        {
            if (task != ModelTask.ImageClassification)
                throw new UsageException($"{modelDir} is a {subject.Config.ModelType} language model: evaluate it with --data FILE");
            var pre = ImagePreprocessor.Load(subject.AssetsDir);
            var images = ImageDataset.LoadFashionMnist(fmnist!, "t10k");
            var selection = limit is int l ? Enumerable.Range(0, Math.Min(l, images.Count)).ToArray() : null;
            var s = Evaluator.Accuracy(subject.Forward, subject.Config, subject.Parameters, dtype, images, pre, batch ?? 50, progress, selection);
            table = new TextTable("model", "images", "correct", "accuracy", "mean NLL", "parameters", "images/s", "seconds")
                .Add(modelDir, s.Images, s.Correct, CommonOptions.Fmt(s.Accuracy), CommonOptions.Fmt(s.MeanNll, "0.000000"),
                     s.Parameters, CommonOptions.Fmt(s.ImagesPerSecond, "0"), CommonOptions.Fmt(s.Seconds, "0.0"));
            json = new EvalOutput
            {
                Model = modelDir, ModelType = subject.Config.ModelType, FashionMnist = fmnist, Split = "t10k",
                Images = s.Images, Correct = s.Correct, Accuracy = s.Accuracy, MeanNll = s.MeanNll,
                Parameters = s.Parameters, ParameterBytes = subject.ParameterBytes, Dtype = subject.Dtype,
                WallSeconds = s.Seconds, ImagesPerSecond = s.ImagesPerSecond, Threads = torch.get_num_threads(),
                Memory = Memory(residentBefore, residentLoaded, firstLoad), Runtime = subject.Runtime,
            };
        }
        subject.Dispose();
        progress.EndLine();
        Console.WriteLine(table);
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, json);
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        return 0;
    }

    /// <summary>Perplexity one layer at a time: the boundary states of a chunk of windows resident, each layer read when it runs.</summary>
    private static int ExecuteStreaming(ParsedArgs a, string modelDir, string data, torch.ScalarType dtype, int? limit, int? batch)
    {
        ConsoleProgress.Status($"opening {modelDir} layer by layer");
        long residentBefore = ResidentMemory.CurrentBytes;
        using var stream = CompressedCheckpoint.IsCompressed(modelDir) ? CompressedCheckpoint.OpenStream(modelDir, dtype) : LayerStream.OpenDense(modelDir, dtype);
        long residentLoaded = ResidentMemory.CurrentBytes;
        var tokenizer = ByteLevelBpeTokenizer.Load(modelDir);
        ConsoleProgress.Status($"tokenizing {data}");
        var windows = TokenWindows.FromFile(data, tokenizer, a.Int("--window", min: 2));
        var selection = limit is int l ? Enumerable.Range(0, Math.Min(l, windows.Count)).ToArray() : null;
        var progress = new ConsoleProgress();
        var s = Evaluator.Perplexity(stream, windows, batch, progress, selection);
        progress.EndLine();
        Console.WriteLine(new TextTable("model", "data", "windows", "predicted tokens", "mean NLL", "perplexity", "parameters", "tokens/s", "seconds")
            .Add(modelDir, data, s.Windows, s.PredictedTokens, CommonOptions.Fmt(s.MeanNll, "0.000000"), CommonOptions.Fmt(s.Perplexity),
                 s.Parameters, CommonOptions.Fmt(s.TokensPerSecond, "0"), CommonOptions.Fmt(s.Seconds, "0.0")));
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, new EvalOutput
            {
                Model = modelDir, ModelType = stream.Shell.Config.ModelType, Data = data, Window = windows.WindowLength,
                Windows = s.Windows, PredictedTokens = s.PredictedTokens, MeanNll = s.MeanNll, Perplexity = s.Perplexity,
                Parameters = s.Parameters, ParameterBytes = s.Parameters * dtype.ElementSize(), Dtype = CalibrationOptions.Name(dtype),
                WallSeconds = s.Seconds, TokensPerSecond = s.TokensPerSecond, Threads = torch.get_num_threads(),
                Memory = Memory(residentBefore, residentLoaded, null), Streaming = true,
            });
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        return 0;
    }

    /// <summary>A sentence encoder against a reference encoder: cosine per sentence and 10-NN agreement (<see cref="Evaluator.CompareEmbeddings"/>).</summary>
    private static int ExecuteEmbeddings(ParsedArgs a, string modelDir)
    {
        string sentences = a.Required("--sentences"), against = a.Required("--against");
        if (a.Has("--data") || a.Has("--fashion-mnist")) throw new UsageException("--sentences evaluates a sentence encoder; leave out --data and --fashion-mnist");
        foreach (var o in new[] { "--window", "--runtime", "--source", "--memory-warmup" })
            if (a.Has(o)) throw new UsageException($"{o} does not apply to --sentences");
        CommonOptions.CheckOutputs(a, ["--model", "--sentences", "--against"]);
        var dtype = CalibrationOptions.DType(a, allowBFloat16: true);
        int? limit = a.OptionalInt("--limit", min: 1);
        int batch = a.Has("--batch-size") ? a.Int("--batch-size", min: 1) : 32;
        if (!File.Exists(sentences)) throw BadInputException.For(sentences, "not found");
        ConsoleProgress.Status($"loading {modelDir} and {against}");
        var model = ModelFolder.Load(modelDir, dtype);
        var reference = ModelFolder.Load(against, dtype);
        if (model.Config is not ISentenceEncoderConfig enc)
            throw new UsageException($"{modelDir} is a {model.Config.ModelType} model, not a sentence encoder: evaluate it with --data or --fashion-mnist");
        if (reference.Config is not ISentenceEncoderConfig refEnc || refEnc.EmbeddingSize != enc.EmbeddingSize || refEnc.VocabSize != enc.VocabSize)
            throw new UsageException($"--against {against} is not a sentence encoder with {modelDir}'s vocabulary and embedding width");
        var tokenizer = WordPieceTokenizer.Load(modelDir, enc.MaxPositions);
        ConsoleProgress.Status($"tokenizing {sentences}");
        var set = SentenceSet.FromFile(sentences, tokenizer, enc, limit);
        var progress = new ConsoleProgress();
        var s = Evaluator.CompareEmbeddings(model, reference, set, batch, progress);
        progress.EndLine();
        Console.WriteLine(new TextTable("model", "against", "sentences", "mean cosine", "min cosine", "10-NN agreement", "parameters", "sentences/s", "seconds")
            .Add(modelDir, against, s.Sentences, CommonOptions.Fmt(s.MeanCosine, "0.000000"), CommonOptions.Fmt(s.MinCosine, "0.000000"),
                 CommonOptions.Fmt(s.Knn10Agreement), s.Parameters, CommonOptions.Fmt(s.SentencesPerSecond, "0.0"), CommonOptions.Fmt(s.Seconds, "0.0")));
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, new EmbeddingEvalOutput
            {
                Model = modelDir, ModelType = model.Config.ModelType, SentencesFile = sentences, Against = against, Sentences = s.Sentences,
                MeanCosine = s.MeanCosine, MinCosine = s.MinCosine, Knn10Agreement = s.Knn10Agreement, Parameters = s.Parameters,
                ParameterBytes = model.ParameterBytes(), ReferenceParameters = reference.ParameterCount(), Dtype = CalibrationOptions.Name(model.DType),
                WallSeconds = s.Seconds, SentencesPerSecond = s.SentencesPerSecond, Threads = torch.get_num_threads(),
            });
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        model.Dispose();
        reference.Dispose();
        return 0;
    }

    /// <summary>What is evaluated: GeoShare's model, or an exported file in ONNX Runtime; the protocol is the same.</summary>
    private sealed record Subject(Func<torch.Tensor, torch.Tensor> Forward, ModelConfig Config, long Parameters, long ParameterBytes,
        string Dtype, string AssetsDir, string? Runtime, IDisposable Owner) : IDisposable
    {
        public static Subject Library(PretrainedModel m, string dir) =>
            new(x => m.call(x), m.Config, m.ParameterCount(), m.ParameterBytes(), m.DType.ToString().ToLowerInvariant(), dir, null, m);

        public static Subject Onnx(OnnxRuntimeModel m, string? source, string file)
        {
            string assets = source ?? m.SourceFolder ?? throw new UsageException($"{file} records no source folder: give --source DIR (its tokenizer or preprocessor)");
            if (source is null && !Directory.Exists(assets))
                throw new UsageException($"{file} was exported from {assets}, which is not here: give --source DIR (its tokenizer or preprocessor)");
            return new(m.Forward, m.Config, m.Parameters, m.ParameterBytes, m.Dtype, assets, "onnxruntime", m);
        }

        public void Dispose() => Owner.Dispose();
    }

    /// <summary>Resident memory: what loading the model added, and the peak over the whole evaluation.</summary>
    private static EvalMemory Memory(long before, long loaded, long? firstLoad) =>
        new(before, loaded, loaded - before, ResidentMemory.PeakBytes, NativeAllocator.Name, firstLoad);

    /// <summary>Managed garbage and the native tensors its finalizers free, gone before the resident set is read.</summary>
    private static void CollectGarbage()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }
}
