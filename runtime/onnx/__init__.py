"""Lowering a Program to ONNX: export and clean-up, INT8 and FP16 forms, external data, provenance, parity."""
