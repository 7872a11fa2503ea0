using System.Diagnostics;
using GeoShare.Evaluation;
using GeoShare.Sharing;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare verify`: does GeoShare compute this checkpoint as transformers does? Its logits against a reference file's.</summary>
public sealed class VerifyCommand : ICommand
{
    public CommandSpec Spec { get; } = new("verify", "compare a model's logits with reference logits (e.g. written by transformers)",
    [
        CommonOptions.Model,
        new("--reference", "FILE", "safetensors with input_ids (I64 [batch, seq]) or pixel_values (F32 [batch, c, h, w]) and logits (F32)", Required: true),
        CommonOptions.Threads,
        CommonOptions.Json,
    ],
    [
        "geoshare verify --model assets/models/gpt2-kjv-brown --reference assets/references/gpt2_logits.safetensors",
        "geoshare verify --model assets/models/vit-fashion-mnist --reference assets/references/vit_logits.safetensors --json vit-verify.json",
    ]);

    public int Execute(ParsedArgs a)
    {
        CommonOptions.ApplyThreads(a);
        var total = Stopwatch.StartNew();
        string modelDir = a.Required("--model"), reference = a.Required("--reference");
        CommonOptions.CheckOutputs(a, ["--model", "--reference"]);
        ConsoleProgress.Status($"loading {modelDir}");
        var model = ModelFolder.Load(modelDir);
        var c = ReferenceCheck.Compare(model, reference);
        string verdict = c.Matches ? "matches" : "DOES NOT MATCH";
        Console.WriteLine($"{modelDir} against {reference} ({c.Input} {Models.SafetensorsFile.FormatShape(c.InputShape)}): " +
            $"||Δ||/||ref|| = {c.RelativeError:0.000E+00}, max |Δ| = {c.MaxAbsDifference:0.000E+00} (tolerance {c.Tolerance:0E+00}): {verdict}");
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, new VerifyOutput
            {
                Model = modelDir, ModelType = model.Config.ModelType, Compressed = CompressedCheckpoint.IsCompressed(modelDir), Reference = reference,
                Input = c.Input, InputShape = c.InputShape, LogitsShape = c.LogitsShape, RelativeError = c.RelativeError,
                MaxAbsDifference = c.MaxAbsDifference, Tolerance = c.Tolerance, Matches = c.Matches,
                Dtype = CalibrationOptions.Name(model.DType), WallSeconds = total.Elapsed.TotalSeconds,
            });
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        if (!c.Matches)
            throw new NumericalException($"{modelDir}'s logits differ from {reference}: ||Δ||/||ref|| = {c.RelativeError:0.000E+00} > {c.Tolerance:0E+00}");
        return 0;
    }
}
