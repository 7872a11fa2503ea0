using GeoShare.Models;

namespace GeoShare.Sharing;

/// <summary>Which matrix types share across layers by default (the rest are compressed per layer).</summary>
public static class ShareableTypes
{
    /// <summary>
    /// Basis Sharing's finding: on LLaMA, Q, K, V, Gate and Up gain from sharing while O and Down lose; its GPT-2
    /// configuration shares c_attn, attn.c_proj and c_fc and keeps mlp.c_proj per layer. For ViT the LLaMA
    /// analogue: query, key, value and the MLP input share; the two output projections stay per layer.
    /// </summary>
    public static IReadOnlyList<string> Default(PretrainedModel model) => model.Config.ModelType switch
    {
        "gpt2" => ["attn.c_attn", "attn.c_proj", "mlp.c_fc"],
        "llama" => ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"],
        "vit" => ["attention.attention.query", "attention.attention.key", "attention.attention.value", "intermediate.dense"],
        _ => model.ProjectionTypes,
    };

    /// <summary>Resolves a user's list ("all", "none", or type names, also their last component like "c_fc").</summary>
    public static IReadOnlyList<string> Resolve(PretrainedModel model, IReadOnlyList<string>? requested)
    {
        if (requested is null || requested.Count == 0) return Default(model);
        if (requested is ["all"]) return model.ProjectionTypes;
        if (requested is ["none"]) return [];
        return requested.Select(r =>
        {
            var exact = model.ProjectionTypes.FirstOrDefault(t => t == r);
            if (exact is not null) return exact;
            var bySuffix = model.ProjectionTypes.Where(t => t.EndsWith("." + r)).ToList();
            if (bySuffix.Count == 1) return bySuffix[0];
            throw new UsageException("shared_types", $"unknown matrix type '{r}' (types: {string.Join(", ", model.ProjectionTypes)})");
        }).Distinct().ToList();
    }
}
