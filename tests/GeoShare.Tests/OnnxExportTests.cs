using System.Diagnostics;
using GeoShare.Evaluation;
using GeoShare.Export;
using GeoShare.Models;
using GeoShare.Sharing;
using Onnx;
using TorchSharp;
using TorchSharp.Modules;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>
/// `geoshare export` and `eval --runtime onnx`: ONNX Runtime's logits against GeoShare's on small models of every
/// architecture, dense and compressed (shared basis, tied matrices); onnx.checker (Debian's python3-onnx) on each file;
/// each shared tensor stored once; external data; refusals. The LLaMA-style families (llama with Llama 3 rope scaling,
/// mistral's sliding window, qwen2's q/k/v biases, qwen3's q/k norms) from their BF16 folders in assets/families.
/// </summary>
public class OnnxExportTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-4;

    public static TheoryData<string, string> Cases() => new()
    {
        { "gpt2", "dense" }, { "gpt2", "basis" }, { "gpt2", "tie" },
        { "llama", "dense" }, { "llama", "basis" }, { "llama", "tie" },
        { "vit", "dense" }, { "vit", "basis" }, { "vit", "tie" },
    };

    /// <summary>
    /// A tiny float32 model of the architecture (TinyModels' sizes), built from config.json text as a folder is: the
    /// exported file carries that text for `eval --runtime onnx`. LLaMA with grouped-query attention (2 heads, 1 KV).
    /// </summary>
    private static PretrainedModel Tiny(string arch, long seed = 11)
    {
        string json = arch switch
        {
            "gpt2" => """{"model_type": "gpt2", "vocab_size": 13, "n_positions": 8, "n_embd": 8, "n_layer": 2, "n_head": 2, "n_inner": 16, "activation_function": "gelu_new"}""",
            "llama" => """{"model_type": "llama", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 16}""",
            _ => """{"model_type": "vit", "image_size": 4, "patch_size": 2, "num_channels": 1, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 12, "layer_norm_eps": 1e-12, "id2label": {"0": "a", "1": "b", "2": "c"}}""",
        };
        return ModelLoader.Build(ModelConfig.Parse(json, arch + " test config"), new RandomTensorSource(seed, ScalarType.Float32));
    }

    /// <summary>
    /// Compresses <paramref name="model"/> in place as a compressed folder loads (CompressedCheckpoint.Load): every
    /// default-shared type with its layers in one color, a shared basis of rank 3 with per-layer coefficients, or one tied
    /// matrix. The values are random: the export must reproduce whatever the layers hold.
    /// </summary>
    private static SharingPlan Share(PretrainedModel model, SharingMode mode, long seed = 31)
    {
        var gen = new Generator((ulong)seed);
        int layers = model.Config.NumLayers;
        var types = new Dictionary<string, TypePlan>();
        using (torch.no_grad())
            foreach (var type in model.Architecture.DefaultSharedTypes)
            {
                var sites = Enumerable.Range(0, layers).Select(l => model.Site(type, l)).ToList();
                int din = sites[0].InFeatures, dout = sites[0].OutFeatures, rank = 3;
                if (mode == SharingMode.Basis)
                {
                    var basis = new Parameter(torch.randn([din, rank], generator: gen).MulScalar(0.3), requires_grad: false);
                    foreach (var s in sites)
                        model.SetProjection(s, new SharedBasisLinear(basis, torch.randn([rank, dout], generator: gen).MulScalar(0.3), model.GetProjection(s).Bias));
                    types[type] = new TypePlan { Mode = mode, Coloring = new int[layers], Ranks = [rank] };
                }
                else
                {
                    var layout = model.GetProjection(sites[0]).Layout;
                    var weight = new Parameter(((DenseLinear)model.GetProjection(sites[0])).Weight.detach().clone(), requires_grad: false);
                    foreach (var s in sites) model.SetProjection(s, new DenseLinear(weight, model.GetProjection(s).Bias, layout));
                    types[type] = new TypePlan { Mode = mode, Coloring = new int[layers] };
                }
            }
        return SharingPlan.ForModel(model, "custom", null, types);
    }

    private static Tensor Input(PretrainedModel model, int batch, int length, long seed)
    {
        var gen = new Generator((ulong)seed);
        return model.Config switch
        {
            ICausalLanguageModelConfig lm => torch.randint(0, lm.VocabSize, [batch, length], dtype: ScalarType.Int64, generator: gen),
            IImageClassifierConfig im => torch.randn([batch, im.NumChannels, im.ImageSize, im.ImageSize], generator: gen),
            _ => throw new ArgumentException("no input for this model"),
        };
    }

    private static Tensor Logits(PretrainedModel model, Tensor input)
    {
        using var _ = torch.no_grad();
        return model.call(input);
    }

    /// <summary>Runs onnx.checker.check_model (with shape inference) in Debian's python3-onnx on the file.</summary>
    public static void AssertCheckerPasses(string path)
    {
        string python = File.Exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-c", "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True); print('ok')", path }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd(), stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0 && stdout.Trim() == "ok", $"onnx.checker on {path} (needs apt-get install python3-onnx): {stderr}");
    }

    /// <summary>Nodes of the graph that read <paramref name="initializer"/>, directly or through its float32 cast.</summary>
    private static int Readers(ModelProto proto, string initializer)
    {
        var names = new HashSet<string> { initializer };
        foreach (var n in proto.Graph.Node.Where(n => n.OpType == "Cast" && n.Input.Contains(initializer))) names.Add(n.Output[0]);
        return proto.Graph.Node.Count(n => n.OpType != "Cast" && n.Input.Any(names.Contains));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void OnnxRuntimeReproducesTheLogitsAndEachSharedTensorIsOneInitializer(string arch, string mode)
    {
        using var tmp = new TempDir();
        var model = Tiny(arch);
        var plan = mode == "dense" ? null : Share(model, mode == "basis" ? SharingMode.Basis : SharingMode.Tie);
        var (proto, builder) = OnnxExporter.Build(model, ScalarType.Float32, OnnxExportOptions.MinOpset, tmp.Path, plan);
        string path = tmp.File("model.onnx");
        var (bytes, external) = OnnxExporter.WriteFile(proto, path);
        Assert.Null(external);
        Assert.Equal(new FileInfo(path).Length, bytes);

        // ONNX Runtime against GeoShare, at two batch and sequence sizes in one session (the axes are dynamic).
        using (var ort = OnnxRuntimeModel.Open(path, threads: 1))
            foreach (var (batch, length, seed) in new[] { (3, 8, 1L), (1, 5, 2L) })
            {
                var input = Input(model, batch, length, seed);
                var expected = Logits(model, input);
                var actual = ort.Forward(input);
                Assert.Equal(expected.shape, actual.shape);
                double err = TensorAssert.RelativeError(actual, expected);
                Assert.True(err < Tolerance, $"{arch} {mode} [{batch}×{length}]: ONNX Runtime's logits are {err:E2} from GeoShare's");
                double max = actual.sub(expected).abs().max().item<float>() / expected.abs().max().item<float>();
                Assert.True(max < Tolerance, $"{arch} {mode}: largest logit difference {max:E2} of the largest logit");
            }
        AssertCheckerPasses(path);

        // Every distinct parameter tensor is one initializer (shared ones once), and nothing else of that size is stored.
        var read = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        Assert.Equal(read.Graph.Initializer.Count, read.Graph.Initializer.Select(i => i.Name).Distinct().Count());
        Assert.Equal(model.ParameterCount(), builder.WeightElements - (arch == "llama" ? RotaryElements(model) : 0));
        if (plan is null) return;
        foreach (var (type, tp) in plan.Types)
        {
            string name = CompressedCheckpoint.SharedName(type, 0, tp.Mode == SharingMode.Basis ? "basis" : "weight");
            var shared = read.Graph.Initializer.Where(i => i.Name == name).ToList();
            Assert.Single(shared);
            Assert.Equal(model.Config.NumLayers, Readers(read, name)); // every layer of the color reads that one initializer
            // and no layer has a copy of its own
            Assert.DoesNotContain(read.Graph.Initializer, i => i.Name.StartsWith(model.LayerPrefix(0) + "." + type + ".") && !i.Name.EndsWith(".coeff") && !i.Name.EndsWith(".bias"));
        }
    }

    /// <summary>The rotary inv_freq [head_dim/2] the LLaMA graph stores beside the parameters (it computes cos and sin from it).</summary>
    private static long RotaryElements(PretrainedModel model) => ((LlamaFamilyConfig)model.Config).Decoder.HeadDim / 2;

    public static TheoryData<string, string> FamilyCases()
    {
        var cases = new TheoryData<string, string>();
        foreach (var family in new[] { "tiny-llama3", "tiny-mistral", "tiny-qwen2", "tiny-qwen3" })
            foreach (var mode in new[] { "dense", "basis", "tie" })
                cases.Add(family, mode);
        return cases;
    }

    /// <summary>
    /// The families' folders (BF16 checkpoints), dense and compressed into a folder as `compress` writes one (random
    /// shared bases or tied matrices for the default-shared types, saved in the checkpoint's BF16): `geoshare export`'s
    /// path keeps BF16, and ONNX Runtime's logits equal those of GeoShare's model loaded from the same folder within
    /// 1e-4, at sequences shorter than, equal to and longer than Mistral's sliding window of 6; a dense file's logits
    /// also equal transformers' reference logits; the checker passes; each shared tensor is one initializer.
    /// </summary>
    [Theory]
    [MemberData(nameof(FamilyCases))]
    public void TheLlamaFamiliesExportFromTheirFoldersAndOnnxRuntimeReproducesTheirLogits(string family, string mode)
    {
        using var tmp = new TempDir();
        string source = Repo.Path("assets", "families", family), folder = source;
        if (mode != "dense")
        {
            var original = ModelFolder.Load(source, ScalarType.Float32);
            var shared = Share(original, mode == "basis" ? SharingMode.Basis : SharingMode.Tie);
            folder = tmp.File("compressed");
            CompressedCheckpoint.Save(original, shared, source, folder);
        }
        string path = tmp.File("model.onnx");
        var export = OnnxExporter.Export(folder, path);
        Assert.Equal("bfloat16", export.Dtype); // the checkpoint's dtype, as for the other graphs
        Assert.Equal(mode != "dense", export.Compressed);
        Assert.Null(export.ExternalData);

        var model = ModelFolder.Load(folder, ScalarType.Float32);
        var spec = ((LlamaFamilyConfig)model.Config).Decoder;
        Assert.Equal(model.ParameterCount(), export.Parameters);
        int[] lengths = [16, 6, 5, 40];
        if (spec.SlidingWindow is int window)
            Assert.True(lengths.Min() < window && lengths.Contains(window) && lengths.Max() > window, "the lengths miss the window's cases");
        double worst = 0, worstMax = 0;
        using (var ort = OnnxRuntimeModel.Open(path, threads: 1))
        {
            Assert.Null(ort.MaxSequence); // the rotary tables are computed for any length: no position limit
            foreach (var (length, i) in lengths.Select((l, i) => (l, i)))
            {
                var input = Input(model, i == 0 ? 3 : 1, length, 5 + i);
                var expected = Logits(model, input);
                var actual = ort.Forward(input);
                Assert.Equal(expected.shape, actual.shape);
                double err = TensorAssert.RelativeError(actual, expected);
                double max = actual.sub(expected).abs().max().item<float>() / expected.abs().max().item<float>();
                worst = Math.Max(worst, err);
                worstMax = Math.Max(worstMax, max);
                Assert.True(err < Tolerance, $"{family} {mode} [×{length}]: ONNX Runtime's logits are {err:E2} from GeoShare's");
                Assert.True(max < Tolerance, $"{family} {mode} [×{length}]: largest logit difference {max:E2} of the largest logit");
            }
            if (mode == "dense")
            {
                // transformers' logits on the reference input ([2, 16], past the window): an implementation not GeoShare's.
                var refs = SafetensorsFile.Open(Path.Combine(source, "reference_logits.safetensors"));
                using var ids = refs.Read("input_ids");
                using var reference = refs.Read("logits", ScalarType.Float32);
                double err = TensorAssert.RelativeError(ort.Forward(ids), reference);
                output.WriteLine($"{family} dense: ONNX Runtime against transformers' reference logits {err:E3}");
                Assert.True(err < Tolerance, $"{family}: ONNX Runtime's logits are {err:E2} from transformers' reference");
            }
        }
        output.WriteLine($"{family} {mode}: ONNX Runtime against GeoShare, ||Δ||/||ref|| ≤ {worst:E3}, max |Δ|/max|ref| ≤ {worstMax:E3} ({export.FileBytes} bytes, {export.Initializers} initializers, {export.SharedInitializers} read by more than one module)");
        AssertCheckerPasses(path);

        var read = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        Assert.Equal(read.Graph.Initializer.Count, read.Graph.Initializer.Select(i => i.Name).Distinct().Count());
        // The stored weights are the model's parameter bytes in BF16 (each shared tensor once) plus the float32 inv_freq.
        var rotary = read.Graph.Initializer.Where(i => i.Name.StartsWith("rotary.")).ToList();
        Assert.Single(rotary);
        Assert.All(rotary, i => Assert.Equal((int)TensorProto.Types.DataType.Float, i.DataType));
        Assert.All(read.Graph.Initializer.Where(i => i.RawData.Length > 0 && !i.Name.StartsWith("rotary.")),
            i => Assert.Equal((int)TensorProto.Types.DataType.Bfloat16, i.DataType));
        Assert.Equal(export.ParameterBytes + 4 * RotaryElements(model), read.Graph.Initializer.Sum(i => (long)i.RawData.Length));
        // The bound: the file within 2% of the parameter bytes (float32 rotary tables of 256 positions took up to 4.3%).
        Assert.True(export.SizeOverhead < 0.02, $"{family} {mode}: the file is {export.FileBytes} bytes, {export.SizeOverhead:P2} over the parameters' {export.ParameterBytes}");
        if (spec.QkNorm) Assert.Equal(2 * spec.Layers, read.Graph.Initializer.Count(i => i.Name.EndsWith("_norm.weight") && i.Name.Contains(".self_attn.")));
        if (spec.QkvBias) Assert.Equal(3 * spec.Layers, read.Graph.Initializer.Count(i => i.Name.EndsWith("_proj.bias") && i.Name.Contains(".self_attn.")));
        Assert.Equal(spec.SlidingWindow is null ? 1 : 2, read.Graph.Node.Count(n => n.OpType == "Trilu"));
        if (mode == "dense")
        {
            Assert.Equal(spec.TieWordEmbeddings ? 1 : 0, export.SharedInitializers);
            return;
        }
        var plan = SharingPlan.Load(Path.Combine(folder, CompressedCheckpoint.PlanFile));
        foreach (var (type, tp) in plan.Types.Where(t => t.Value.Mode != SharingMode.Dense))
        {
            string name = CompressedCheckpoint.SharedName(type, 0, tp.Mode == SharingMode.Basis ? "basis" : "weight");
            Assert.Single(read.Graph.Initializer, i => i.Name == name);
            Assert.Equal(model.Config.NumLayers, Readers(read, name));
            Assert.DoesNotContain(read.Graph.Initializer, i => i.Name.StartsWith(model.LayerPrefix(0) + "." + type + ".") && !i.Name.EndsWith(".coeff") && !i.Name.EndsWith(".bias"));
        }
    }

    /// <summary>
    /// Every architecture the library loads has a graph; the LLaMA-style families read config.json's
    /// max_position_embeddings (or the family's transformers default when it is absent), but their graphs store no table
    /// of that many positions: only the model's inv_freq [head_dim/2], bit for bit, and no sequence limit.
    /// </summary>
    [Fact]
    public void EveryArchitectureHasAGraphAndEachFamilysGraphStoresTheModelsInverseFrequenciesNotPositionTables()
    {
        Assert.All(Architectures.All, a => Assert.Same(a, ArchitectureGraphs.For(a)?.Architecture));
        foreach (var (type, absent) in new[] { ("llama", 2048), ("mistral", 4096 * 32), ("qwen2", 32768), ("qwen3", 32768) })
            foreach (int? written in new int?[] { null, 24 })
            {
                string max = written is int w ? $", \"max_position_embeddings\": {w}" : "";
                string json = $$"""{"model_type": "{{type}}", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4{{max}}}""";
                var model = ModelLoader.Build(ModelConfig.Parse(json, type + " test config"), new RandomTensorSource(3, ScalarType.Float32));
                var (proto, _) = OnnxExporter.Build(model, ScalarType.Float32, OnnxExportOptions.MinOpset);
                int expected = written ?? absent;
                Assert.Equal(expected, ((LlamaFamilyConfig)model.Config).MaxPositionEmbeddings);
                Assert.DoesNotContain(proto.MetadataProps, m => m.Key == OnnxExporter.MaxSequenceKey);
                var inv = proto.Graph.Initializer.Single(i => i.Name.StartsWith("rotary."));
                Assert.Equal([2L], inv.Dims);
                using var modelInv = ((LlamaFamilyConfig)model.Config).Decoder.Rope.InverseFrequencies(4);
                Assert.Equal(modelInv.data<float>().ToArray(), System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(inv.RawData.Span).ToArray());
            }
    }

    /// <summary>
    /// Weights stored in float16 or bfloat16 (cast to float32 in the graph) give the logits of the model whose weights
    /// libtorch rounded to that dtype; and opsets 18 and 21 (ReduceMean's axes as an input, newer IR) run as 17 does.
    /// </summary>
    [Theory]
    [InlineData("llama", "float16", 17)]
    [InlineData("gpt2", "bfloat16", 17)]
    [InlineData("llama", "float32", 18)]
    [InlineData("vit", "float32", 21)]
    public void StoredDtypesAndLaterOpsetsGiveTheLogitsOfTheRoundedModel(string arch, string dtype, int opset)
    {
        using var tmp = new TempDir();
        var model = Tiny(arch);
        var plan = Share(model, SharingMode.Basis);
        var stored = OnnxExporter.ParseDType(dtype);
        var (proto, builder) = OnnxExporter.Build(model, stored, opset, tmp.Path, plan);
        string path = tmp.File("model.onnx");
        OnnxExporter.WriteFile(proto, path);
        Assert.All(builder.WeightInitializers.Where(n => !n.StartsWith("rotary")).Select(n => proto.Graph.Initializer.Single(i => i.Name == n)),
            i => Assert.Equal((int)OnnxGraphBuilder.OnnxDType(stored), i.DataType));
        var input = Input(model, 2, 6, 7);
        var unrounded = Logits(model, input);
        using (torch.no_grad())
            foreach (var p in model.parameters()) p.copy_(p.to_type(stored).to_type(ScalarType.Float32));
        var expected = Logits(model, input);
        using var ort = OnnxRuntimeModel.Open(path, threads: 1);
        var actual = ort.Forward(input);
        double err = TensorAssert.RelativeError(actual, expected);
        Assert.True(err < Tolerance, $"{arch} {dtype} opset {opset}: {err:E2} from the rounded model's logits");
        if (stored != ScalarType.Float32)
            Assert.True(TensorAssert.RelativeError(actual, unrounded) > 10 * err, "the rounding does not show: the test tells nothing");
        if (opset == OnnxExportOptions.MinOpset) AssertCheckerPasses(path);
    }

    [Fact]
    public void WeightsPastTheThresholdGoToAnExternalFileThatOnnxRuntimeAndTheCheckerRead()
    {
        using var tmp = new TempDir();
        var model = Tiny("gpt2");
        var plan = Share(model, SharingMode.Basis);
        var (proto, _) = OnnxExporter.Build(model, ScalarType.Float32, OnnxExportOptions.MinOpset, tmp.Path, plan);
        string path = tmp.File("external.onnx");
        var (bytes, external) = OnnxExporter.WriteFile(proto, path, externalThreshold: 0, externalMinBytes: 64);
        Assert.Equal("external.onnx.data", external);
        string data = tmp.File("external.onnx.data");
        Assert.True(File.Exists(data));
        Assert.Equal(new FileInfo(path).Length + new FileInfo(data).Length, bytes);
        var read = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        var outside = read.Graph.Initializer.Where(i => i.DataLocation == TensorProto.Types.DataLocation.External).ToList();
        Assert.NotEmpty(outside);
        Assert.All(outside, i => Assert.True(i.RawData.IsEmpty && i.ExternalData.Any(e => e.Key == "location" && e.Value == external)));
        Assert.True(new FileInfo(path).Length < new FileInfo(data).Length / 4, "the weights stayed inside the model file");

        using var ort = OnnxRuntimeModel.Open(path, threads: 1);
        var input = Input(model, 2, 8, 3);
        double err = TensorAssert.RelativeError(ort.Forward(input), Logits(model, input));
        Assert.True(err < Tolerance, $"with external data the logits are {err:E2} from GeoShare's");
        AssertCheckerPasses(path);
    }

    /// <summary>A projection the exporter has no ONNX form for.</summary>
    private sealed class ScaledLinear(int n) : LinearMap(nameof(ScaledLinear), n, n)
    {
        public override Parameter? Bias => null;
        public override Tensor WeightInOut() => torch.eye(InFeatures).MulScalar(2L);
        protected override Tensor Apply(Tensor x) => x.MulScalar(2L);
    }

    [Fact]
    public void AProjectionOrOptionTheExporterCannotWriteIsRefusedByNameAndNoFileIsLeft()
    {
        using var tmp = new TempDir();
        var model = Tiny("gpt2");
        var site = model.Site("attn.c_proj", 1);
        model.SetProjection(site, new ScaledLinear(site.InFeatures));
        var e = Assert.Throws<UsageException>(() => OnnxExporter.Build(model, ScalarType.Float32, OnnxExportOptions.MinOpset));
        Assert.Contains("ScaledLinear", e.Message);
        Assert.Contains(site.Name, e.Message);

        Assert.Contains("opset", Assert.Throws<UsageException>(() => new OnnxExportOptions { Opset = 13 }.Validate()).Message);
        Assert.Contains("save_dtype", Assert.Throws<UsageException>(() => new OnnxExportOptions { SaveDType = ScalarType.Float64 }.Validate()).Message);

        // GPT-2's learned position table (n_positions 8) ends: a longer sequence is refused before ONNX Runtime runs.
        string gpt2Path = tmp.File("gpt2.onnx");
        var gpt2 = Tiny("gpt2");
        OnnxExporter.WriteFile(OnnxExporter.Build(gpt2, ScalarType.Float32, OnnxExportOptions.MinOpset).Proto, gpt2Path);
        using (var ort = OnnxRuntimeModel.Open(gpt2Path, threads: 1))
        {
            Assert.Equal(8, ort.MaxSequence);
            Assert.Contains("8 positions", Assert.Throws<UsageException>(() => ort.Forward(Input(gpt2, 1, 9, 4))).Message);
            Assert.Equal(8, ort.Forward(Input(gpt2, 1, 8, 4)).shape[1]);
        }
        File.Delete(gpt2Path);

        // The LLaMA graph computes its rotary tables for the input's length: past max_position_embeddings (16), as the
        // model does, it is not refused and gives the model's logits.
        var llama = Tiny("llama");
        string llamaPath = tmp.File("llama.onnx");
        OnnxExporter.WriteFile(OnnxExporter.Build(llama, ScalarType.Float32, OnnxExportOptions.MinOpset).Proto, llamaPath);
        using (var ort = OnnxRuntimeModel.Open(llamaPath, threads: 1))
        {
            Assert.Null(ort.MaxSequence);
            var longInput = Input(llama, 1, 40, 4);
            var longLogits = ort.Forward(longInput);
            Assert.Equal(40, longLogits.shape[1]);
            double err = TensorAssert.RelativeError(longLogits, Logits(llama, longInput));
            Assert.True(err < Tolerance, $"llama past max_position_embeddings: {err:E2} from GeoShare's logits");
        }
        File.Delete(llamaPath);

        string dir = TinyModelFolders.Gpt2(tmp, 2);
        foreach (var (option, value) in new[] { ("--opset", "13"), ("--save-dtype", "float64") })
        {
            string onnx = tmp.File($"refused{option}.onnx");
            var r = GeoshareProcess.Run("export", "--model", dir, "--onnx", onnx, option, value);
            Assert.Equal(2, r.ExitCode);
            Assert.Contains(option, r.Stderr);
            Assert.False(File.Exists(onnx));
        }
        Assert.Empty(Directory.GetFiles(tmp.Path, "*.onnx*")); // no temporary left either
    }

    /// <summary>
    /// The commands end to end on a toy GPT-2 folder, compressed by `geoshare compress` in both modes: the exported file
    /// is about the compressed model's parameter bytes, and `eval --runtime onnx` gives `eval`'s perplexity.
    /// </summary>
    [Fact]
    public void ExportedCompressedFoldersEvaluateInOnnxRuntimeToEvalsPerplexity()
    {
        using var tmp = new TempDir();
        string dense = TinyModelFolders.Gpt2(tmp, 2), text = TinyModelFolders.Text(tmp, 12_000);
        foreach (var mode in new[] { "basis", "tie" })
        {
            string folder = tmp.File("compressed-" + mode);
            var c = GeoshareProcess.Run("compress", "--model", dense, "--data", text, "--calib-windows", "8", "--calib-stride", "2",
                "--ratio", "0.3", "--method", "all", "--mode", mode, "--out", folder);
            Assert.True(c.ExitCode == 0, c.Stderr);
            string onnx = tmp.File(mode + ".onnx");
            var x = GeoshareProcess.Run("export", "--model", folder, "--onnx", onnx, "--json", tmp.File(mode + "-export.json"));
            Assert.True(x.ExitCode == 0, x.Stderr);
            var export = JsonOutput.Read<ExportOutput>(tmp.File(mode + "-export.json"));
            Assert.True(export.Compressed);
            Assert.Equal(ModelFolder.Load(folder).ParameterCount(), export.Parameters);
            // The stored weights are exactly the compressed model's parameter bytes (nothing re-expanded, nothing twice);
            // the rest is the graph, a few kB (2% of this toy; 0.3-0.8% of the bundled models, README).
            var read = ModelProto.Parser.ParseFrom(File.ReadAllBytes(onnx));
            Assert.Equal(export.ParameterBytes, read.Graph.Initializer.Sum(i => (long)i.RawData.Length));
            Assert.Equal(new FileInfo(onnx).Length, export.FileBytes);
            Assert.True(export.FileBytes - export.ParameterBytes < 16_000, $"{mode}: the file is {export.FileBytes} bytes, the parameters {export.ParameterBytes}");
            Assert.True(export.SharedInitializers >= 1);
            AssertCheckerPasses(onnx);

            var library = GeoshareProcess.Run("eval", "--model", folder, "--data", text, "--json", tmp.File(mode + "-eval.json"));
            var ort = GeoshareProcess.Run("eval", "--runtime", "onnx", "--model", onnx, "--data", text, "--threads", "1", "--json", tmp.File(mode + "-ort.json"));
            Assert.True(library.ExitCode == 0, library.Stderr);
            Assert.True(ort.ExitCode == 0, ort.Stderr);
            var a = JsonOutput.Read<EvalOutput>(tmp.File(mode + "-eval.json"));
            var b = JsonOutput.Read<EvalOutput>(tmp.File(mode + "-ort.json"));
            Assert.Equal("onnxruntime", b.Runtime);
            Assert.Null(a.Runtime);
            Assert.Equal(a.Windows, b.Windows);
            Assert.Equal(a.Parameters, b.Parameters);
            double rel = Math.Abs(b.Perplexity!.Value - a.Perplexity!.Value) / a.Perplexity.Value;
            Assert.True(rel < Tolerance, $"{mode}: ONNX Runtime's perplexity {b.Perplexity} vs eval's {a.Perplexity} ({rel:E2})");
        }
    }
}
