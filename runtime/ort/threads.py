"""How many threads ONNX Runtime sessions run: by default, for latency measurements, and at most. Torch-free and
without onnxruntime, so that the command line's --threads flags are made and checked before either loads."""

DEFAULT_THREADS = 1
# Latency measurements (prunefx prune/depth/compress/bench and merge_blocks' timing): two threads, the
# cores of the machines we measure on and of a Jetson's busy CPU cluster; one constant for every command.
LATENCY_THREADS = 2
MAX_THREADS = 256  # one OS thread each: beyond the largest CPUs' cores they only contend (and exhaust memory)
