using GeoShare.Models;

namespace GeoShare.Sharing;

/// <summary>Which matrix types share across layers by default (the rest are compressed per layer).</summary>
public static class ShareableTypes
{
    /// <summary>The architecture's declaration (Basis Sharing's findings; see each architecture's DefaultSharedTypes).</summary>
    public static IReadOnlyList<string> Default(PretrainedModel model) => model.Architecture.DefaultSharedTypes;

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
