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

/// <summary>
/// A wrong, missing or unknown argument. The library names its own parameter: <c>new UsageException("ratio", "must be
/// within (0, 1), got 0")</c> has the message <c>ratio: must be within (0, 1), got 0</c>. A front end names the option
/// the value came from instead (<see cref="MessageFor"/>; the CLI maps ratio to its option of that name). The
/// one-argument form is a whole message, for a problem of no single parameter or in the front end's own terms.
/// </summary>
public sealed class UsageException : GeoShareException
{
    public UsageException(string message) : base(message, ExitCode.Usage) => Problem = message;

    /// <param name="parameter">the library's name of the argument (snake_case, e.g. "ratio", "shared_types")</param>
    /// <param name="problem">what is wrong with it, without naming it</param>
    public UsageException(string parameter, string problem) : base($"{parameter}: {problem}", ExitCode.Usage)
    {
        Parameter = parameter;
        Problem = problem;
    }

    /// <summary>The library parameter at fault; null for a message in the caller's terms.</summary>
    public string? Parameter { get; }
    public string Problem { get; }

    /// <summary>The message with the parameter named as the caller knows it (<paramref name="name"/>: parameter → e.g. option).</summary>
    public string MessageFor(Func<string, string> name) => Parameter is null ? Message : $"{name(Parameter)}: {Problem}";
}

/// <summary>A computation that produced NaN/Inf or failed to converge.</summary>
public sealed class NumericalException(string message) : GeoShareException(message, ExitCode.Numerical);
