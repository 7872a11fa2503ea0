using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

/// <summary>What every layer of one batch reads besides the hidden state: LLaMA's rotary cos/sin; nothing for GPT-2.</summary>
public sealed class LayerContext(Tensor? cos = null, Tensor? sin = null) : IDisposable
{
    public Tensor? Cos { get; } = cos;
    public Tensor? Sin { get; } = sin;

    public void Dispose()
    {
        Cos?.Dispose();
        Sin?.Dispose();
    }
}

/// <summary>
/// One transformer layer (GPT-2's block, a LLaMA decoder layer): hidden state in, hidden state out. Its projections are
/// addressed by type (the path inside the layer, "attn.c_attn"), as <see cref="ProjectionSite.Type"/> names them.
/// </summary>
public abstract class DecoderLayer(string name) : Module<Tensor, Tensor>(name)
{
    public abstract Tensor Forward(Tensor hidden, LayerContext context);

    public override Tensor forward(Tensor x) => throw new NotSupportedException($"{GetType().Name} runs through Forward(hidden, context)");

    public LinearMap GetProjection(string type)
    {
        var (owner, local) = Owner(type);
        return owner.GetProjection(local);
    }

    public void SetProjection(string type, LinearMap map)
    {
        var (owner, local) = Owner(type);
        owner.SetProjection(local, map);
    }

    private (ProjectionOwner Owner, string Local) Owner(string type)
    {
        int dot = type.LastIndexOf('.');
        Module current = this;
        if (dot > 0)
            foreach (var part in type[..dot].Split('.'))
                current = current.named_children().FirstOrDefault(c => c.name == part).module ?? throw new ArgumentException($"no module '{type}' in {GetName()}");
        if (current is not ProjectionOwner owner) throw new ArgumentException($"'{type}' is not a shareable projection");
        return (owner, type[(dot + 1)..]);
    }
}

/// <summary>
/// A causal language model as its three steps: embed the ids (hidden state and per-batch context), run each layer, and the
/// head (final norm, logits). The in-memory forward is exactly these steps; <see cref="LayerStream"/> runs them one layer
/// at a time with only that layer resident.
/// </summary>
public interface ILayeredModel
{
    (Tensor Hidden, LayerContext Context) Embed(Tensor ids);

    DecoderLayer Layer(int index);

    Tensor Head(Tensor hidden);
}

/// <summary>
/// A causal language model held one layer at a time: the parts outside the layers (embeddings, final norm, head) are
/// resident in <see cref="Shell"/>, whose layers are placeholders (zero-stride tensors that take no memory and never run);
/// each layer is read from the checkpoint when it runs and freed after. The boundary hidden states of all batches are
/// what stays between layers.
/// </summary>
public sealed class LayerStream : IDisposable
{
    public PretrainedModel Shell { get; }
    public string Dir { get; }
    private readonly Func<int, DecoderLayer> _load;

    /// <summary>Parameters the streamed model stores (each shared tensor once): its checkpoint's floating-point tensors.</summary>
    public long ParameterCount { get; }

    public LayerStream(PretrainedModel shell, string dir, long parameterCount, Func<int, DecoderLayer> load)
    {
        ParameterCount = parameterCount;
        if (shell is not ILayeredModel) throw new UsageException("streaming", $"a {shell.Config.ModelType} model has no layer-wise path (the layered ones: {Architectures.LayeredTypes})");
        Shell = shell;
        Dir = dir;
        _load = load;
    }

    public ILayeredModel Parts => (ILayeredModel)Shell;
    public int Layers => Shell.Config.NumLayers;

    /// <summary>Whether <paramref name="architecture"/> can run layer by layer.</summary>
    public static bool Supports(Architecture architecture) => architecture.StreamsLayers;

    /// <summary>Layer <paramref name="index"/> read from the checkpoint (dispose it after use).</summary>
    public DecoderLayer LoadLayer(int index)
    {
        using var _ = torch.no_grad();
        var layer = _load(index);
        layer.eval();
        foreach (var p in layer.parameters()) p.requires_grad = false;
        return layer;
    }

    /// <summary>A dense Hugging Face folder, streamed: layers read from its safetensors files when they run.</summary>
    public static LayerStream OpenDense(string dir, ScalarType dtype = ScalarType.Float32)
    {
        if (Checkpoint.IsGeoShareCompressed(dir))
            throw BadInputException.For(dir, $"is a GeoShare-compressed model ({Checkpoint.GeoSharePlanFile}); stream it with CompressedCheckpoint.OpenStream");
        var checkpoint = Checkpoint.Open(dir);
        var architecture = checkpoint.Config.Architecture;
        if (!architecture.StreamsLayers) throw new UsageException("streaming", $"a {architecture.ModelType} model has no layer-wise path (the layered ones: {Architectures.LayeredTypes})");
        var src = new CheckpointTensorSource(checkpoint, dtype);
        var shell = BuildShell(checkpoint.Config, src);
        var tied = architecture.TiedKeys(checkpoint.Config);
        var prefixes = LayerPrefixes(checkpoint.Config);
        var unexpected = checkpoint.TensorNames
            .Where(n => !src.Used.Contains(n) && !prefixes.Any(n.StartsWith) && !architecture.IgnoredSuffixes.Any(n.EndsWith) && !tied.ContainsKey(n))
            .Order(StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0)
            throw BadInputException.For(dir, $"checkpoint holds {unexpected.Count} tensor(s) config.json does not account for, e.g. '{unexpected[0]}'");
        shell.CheckpointDType = checkpoint.StorageDType;
        return new LayerStream(shell, dir, StoredParameters(checkpoint), i => architecture.BuildLayer(checkpoint.Config, src, i));
    }

    /// <summary>Elements of a checkpoint's floating-point tensors, less the buffers its architecture computes instead.</summary>
    public static long StoredParameters(Checkpoint checkpoint) =>
        checkpoint.TensorNames.Where(n => !checkpoint.Config.Architecture.IgnoredSuffixes.Any(n.EndsWith))
            .Select(checkpoint.Entry).Where(e => SafetensorsFile.IsFloat(e.DType)).Sum(e => e.Elements);

    /// <summary>"{prefix}." of every layer: the tensors a shell leaves as placeholders.</summary>
    public static IReadOnlyList<string> LayerPrefixes(ModelConfig config) =>
        Enumerable.Range(0, config.NumLayers).Select(i => config.Architecture.LayerPrefix(i) + ".").ToList();

    /// <summary>The model with real tensors outside the layers and placeholders inside them.</summary>
    public static PretrainedModel BuildShell(ModelConfig config, TensorSource src) =>
        ModelLoader.Build(config, new ShellTensorSource(src, LayerPrefixes(config)));

    /// <summary>
    /// Runs every batch through every layer: embeds them, then for each layer loads it, calls <paramref name="before"/>
    /// (to attach probes), runs all batches through it, calls <paramref name="after"/> and frees it. Returns the final
    /// hidden states (one per batch, the caller disposes them) and the contexts.
    /// </summary>
    public (List<Tensor> Hidden, List<LayerContext> Contexts) Run(IReadOnlyList<Tensor> ids, Action<int, DecoderLayer>? before = null,
        Action<int, DecoderLayer>? after = null, IProgress<ProgressTick>? progress = null, string stage = "layers")
    {
        using var _ = torch.no_grad();
        var hidden = new List<Tensor>();
        var contexts = new List<LayerContext>();
        foreach (var batch in ids)
        {
            using var scope = torch.NewDisposeScope();
            var (h, c) = Parts.Embed(batch);
            hidden.Add(h.DetachFromDisposeScope());
            c.Cos?.DetachFromDisposeScope();
            c.Sin?.DetachFromDisposeScope();
            contexts.Add(c);
        }
        progress?.Report(new ProgressTick(stage, 0, Layers, "layers"));
        for (int l = 0; l < Layers; l++)
        {
            var layer = LoadLayer(l);
            try
            {
                before?.Invoke(l, layer);
                for (int b = 0; b < hidden.Count; b++)
                {
                    Tensor next;
                    using (var scope = torch.NewDisposeScope())
                        next = layer.Forward(hidden[b], contexts[b]).DetachFromDisposeScope();
                    hidden[b].Dispose();
                    hidden[b] = next;
                }
                after?.Invoke(l, layer);
            }
            finally
            {
                Release(layer);
            }
            progress?.Report(new ProgressTick(stage, l + 1, Layers, "layers"));
        }
        return (hidden, contexts);
    }

    /// <summary>Frees a loaded layer's tensors now (not at some finalizer): the next layer is read into the memory they held.</summary>
    public static void Release(Module layer)
    {
        foreach (var p in layer.parameters()) p.Dispose();
        layer.Dispose();
    }

    public void Dispose() => Shell.Dispose();

    /// <summary>Real tensors outside the layers; a zero-stride placeholder of the right shape for every tensor under a layer prefix.</summary>
    private sealed class ShellTensorSource(TensorSource inner, IReadOnlyList<string> layerPrefixes) : TensorSource(inner.DType)
    {
        private bool InLayer(string name) => layerPrefixes.Any(name.StartsWith);

        private Tensor Placeholder(long[] shape)
        {
            using var zero = torch.zeros([], dtype: DType);
            return zero.expand(shape);
        }

        public override bool Has(string name) => inner.Has(name);
        public override Tensor Take(string name, params long[] shape) => InLayer(name) ? Placeholder(shape) : inner.Take(name, shape);
        public override Tensor TakeOnes(string name, params long[] shape) => InLayer(name) ? Placeholder(shape) : inner.TakeOnes(name, shape);
        public override Tensor TakeZeros(string name, params long[] shape) => InLayer(name) ? Placeholder(shape) : inner.TakeZeros(name, shape);
    }
}
