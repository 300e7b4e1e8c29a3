"""Give memory the process has freed back to the operating system (glibc's malloc_trim), where the C
library offers it; elsewhere a no-op.

glibc serves allocations below its mmap threshold (which grows up to 32 MiB: a layer's weights) from the
heap and keeps what is freed there for later allocations of that kind. A buffer above the threshold (a
serialised model, an ONNX Runtime initializer arena) is mapped anew and cannot reuse it, so after a stage
that freed one copy of a model's weights the next stage's copy would come on top of it. Called between such
stages, the process holds one copy at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim  # glibc only: musl, macOS and Windows have none
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the operating system; whether the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
