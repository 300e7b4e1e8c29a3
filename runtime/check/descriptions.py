"""The targets `prunefx check` knows, by name, each with the line that says what it is: `--target`'s choices
and help, made without onnx (targets.py, the targets' data, imports it for its element types)."""

DESCRIPTIONS = {
    "trt10": "TensorRT 10.x (x86-64 GPUs; JetPack 6 ships 10.3)",
    "trt11": "TensorRT 11.x (always strongly typed)",
    "orin": "Jetson Orin, JetPack 6: TensorRT 10.3 on an Ampere GPU with sparse tensor cores",
    "ort": "ONNX Runtime, CPU execution provider",
}
