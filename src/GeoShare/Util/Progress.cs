namespace GeoShare;

/// <summary>Where long work stands: <see cref="Done"/> of <see cref="Total"/> units of one stage.</summary>
public sealed record ProgressTick(string Stage, long Done, long Total, string Unit);
