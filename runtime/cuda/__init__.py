"""PyTorch on an NVIDIA GPU: CUDA-graph samples, per-node profiles, table entries, 2:4 sparse layers."""
