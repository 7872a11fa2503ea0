using GeoShare.Export;

namespace GeoShare.Cli.Commands;

/// <summary>`geoshare export`: a dense or compressed model folder as one ONNX file (each shared basis stored once).</summary>
public sealed class ExportCommand : ICommand
{
    public CommandSpec Spec { get; } = new("export", "write a dense or compressed model as ONNX (each shared basis once) for ONNX Runtime",
    [
        CommonOptions.Model,
        new("--onnx", "FILE", "the ONNX file to write (weights over 2 GB go to FILE.data beside it)", Required: true),
        new("--opset", "N", $"ONNX opset, {OnnxExportOptions.MinOpset}..{OnnxExportOptions.MaxOpset}", OnnxExportOptions.MinOpset.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        new("--save-dtype", "TYPE", "dtype of the stored weights: float32, float16 or bfloat16 (the graph computes in float32)", DefaultNote: "the checkpoint's"),
        CommonOptions.Json,
    ],
    [
        "geoshare export --model assets/models/gpt2-kjv-brown --onnx gpt2.onnx",
        "geoshare export --model gpt2-geo-30 --onnx gpt2-geo-30.onnx --json export.json",
        "geoshare eval --runtime onnx --model gpt2-geo-30.onnx --data assets/data/corpus/test.txt",
    ]);

    public int Execute(ParsedArgs a)
    {
        string modelDir = a.Required("--model"), onnx = a.Required("--onnx");
        CommonOptions.CheckOutputs(a, ["--model"], ("--onnx", OutputKind.File));
        if (Directory.Exists(onnx)) throw new UsageException($"--onnx {onnx} is a folder");
        var options = new OnnxExportOptions
        {
            Opset = a.Int("--opset"),
            SaveDType = a.String("--save-dtype") is { } d ? OnnxExporter.ParseDType(d) : null,
        };
        options.Validate();
        ConsoleProgress.Status($"exporting {modelDir}");
        var result = OnnxExporter.Export(modelDir, onnx, options);
        var table = new TextTable("model", "onnx", "dtype", "parameters", "parameter bytes", "file bytes", "overhead", "initializers", "shared", "nodes")
            .Add(modelDir, result.ExternalData is null ? onnx : $"{onnx} + {result.ExternalData}", result.Dtype, result.Parameters, result.ParameterBytes,
                 result.FileBytes, CommonOptions.Fmt(100 * result.SizeOverhead, "0.00") + "%", result.Initializers, result.SharedInitializers, result.Nodes);
        Console.WriteLine(table);
        if (a.String("--json") is { } jsonPath)
        {
            JsonOutput.Write(jsonPath, result);
            ConsoleProgress.Status($"wrote {jsonPath}");
        }
        return 0;
    }
}
