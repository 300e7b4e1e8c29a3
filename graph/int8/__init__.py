"""INT8: fake quantization on the graph, attention included."""
