"""TensorRT: engine builds, caches, plans and profiles, trtexec, Torch-TensorRT, Jetson board state."""
