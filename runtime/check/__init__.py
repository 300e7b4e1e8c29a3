"""`prunefx check`: engine readiness of an ONNX file without a GPU (targets, rules, findings)."""
