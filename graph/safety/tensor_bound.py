"""The most elements one value of a graph read from a file may hold: a loaded `.pt2` (graph_bounds.py) and an ONNX
file checked or run (runtime/onnx/bounds.py, runtime/check/graph_index.py) are held to it before anything runs."""

# 2**28 float32 values are 1 GiB: far above any activation of a vision model at the batch sizes prunefx
# captures (ResNet-50's largest at batch 8 is 2**25), far below what would exhaust a development machine.
MAX_TENSOR_ELEMENTS = 1 << 28
