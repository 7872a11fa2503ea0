namespace GeoShare;

/// <summary>Process exit codes shared by the command line and the library's exceptions.</summary>
public enum ExitCode
{
    Ok = 0,
    Failure = 1,
    Usage = 2,
    BadInput = 3,
    Numerical = 4,
}

/// <summary>An expected failure with a one-line message for the user and the exit code it maps to.</summary>
public class GeoShareException(string message, ExitCode code) : Exception(message)
{
    public ExitCode Code { get; } = code;
}

/// <summary>A file, folder or data problem: the message names the file and what is wrong with it.</summary>
public sealed class BadInputException(string message) : GeoShareException(message, ExitCode.BadInput)
{
    public static BadInputException For(string path, string problem) => new($"{path}: {problem}");
}

/// <summary>A wrong, missing or unknown option.</summary>
public sealed class UsageException(string message) : GeoShareException(message, ExitCode.Usage);

/// <summary>A computation that produced NaN/Inf or failed to converge.</summary>
public sealed class NumericalException(string message) : GeoShareException(message, ExitCode.Numerical);
