"""How many threads ONNX Runtime sessions run: by default, for latency measurements, and at most. Torch-free and
without onnxruntime, so that the command line's --threads flags are made and checked before either loads."""

DEFAULT_THREADS = 1
# Latency measurements (prunefx prune/depth/compress/bench and merge_blocks' timing): two threads, the
# cores of the machines we measure on and of a Jetson's busy CPU cluster; one constant for every command.
LATENCY_THREADS = 2
MAX_THREADS = 256  # one OS thread each: beyond the largest CPUs' cores they only contend (and exhaust memory)


def threads_problem(threads) -> str | None:
    """Why `threads` is no thread count a session or a timed torch call can run on, in words; None where it is."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        return f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}"
    return None
