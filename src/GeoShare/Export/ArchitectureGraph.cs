using GeoShare.Models;
using TorchSharp.Modules;

namespace GeoShare.Export;

/// <summary>
/// One architecture's ONNX graph, written in that architecture's own file (Gpt2Graph.cs, VitGraph.cs; LlamaGraph.cs for
/// the LLaMA-style families, one graph parameterised by the family's decoder spec, as Models builds them) from
/// the shared <see cref="OnnxGraphBuilder"/>. The graph reads the model's tensors by their checkpoint names and its
/// projections through <see cref="PretrainedModel.GetProjection(string)"/>, so dense, shared-basis and tied layers
/// export alike.
/// </summary>
public abstract class ArchitectureGraph
{
    /// <summary>The architecture this graph writes; the registry is keyed by it.</summary>
    public abstract Architecture Architecture { get; }

    /// <summary>Adds the inputs, nodes and outputs of <paramref name="model"/> to <paramref name="g"/>.</summary>
    public abstract void Build(PretrainedModel model, OnnxGraphBuilder g);

    /// <summary>
    /// A parameter by its checkpoint name (the module tree names parameters as the checkpoint does); a tied key (lm_head
    /// reading the embedding) resolves to the tensor it reads, which the module tree lists once.
    /// </summary>
    protected static Parameter Param(PretrainedModel model, IReadOnlyDictionary<string, Parameter> ps, string name)
    {
        if (ps.TryGetValue(name, out var p)) return p;
        if (model.Architecture.TiedKeys(model.Config).TryGetValue(name, out var tied) && ps.TryGetValue(tied, out var t)) return t;
        throw new ArgumentException($"the model has no parameter '{name}'");
    }

    /// <summary>A projection of layer <paramref name="prefix"/>, as y = x W + b over [N, in].</summary>
    protected static string Project(OnnxGraphBuilder g, PretrainedModel model, string x, string prefix, string localName) =>
        g.Linear(x, model.GetProjection($"{prefix}.{localName}"), $"{prefix}.{localName}");
}

/// <summary>The architectures the exporter writes, keyed by their descriptors (no model-type names here).</summary>
public static class ArchitectureGraphs
{
    public static IReadOnlyList<ArchitectureGraph> All { get; } = [new Gpt2Graph(), .. LlamaGraph.Families, new VitGraph(), new BertGraph()];

    public static ArchitectureGraph? For(Architecture a) => All.FirstOrDefault(g => ReferenceEquals(g.Architecture, a));
}
