"""Faults of the environment named as such: what the machine, the limits or the locale lack, in one line.

A full disk, a read-only cache folder, a process or open-file limit, running out of memory, a locale that
cannot spell a path: none is prunefx's bug, and none may read as "internal error, please report". The CLI
asks `environment_fault(error)` for the line before it falls back to an internal error (prunefx/cli/__init__.py).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import resource
import sys
import traceback

from prunefx.graph.errors import first_line, printable

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_FILES = {errno.EMFILE, errno.ENFILE}
# What allocators say when they fail: torch's CPU allocator, CUDA's, ONNX Runtime's (std::bad_alloc).
_OUT_OF_MEMORY_WORDS = ("can't allocate memory", "out of memory", "bad_alloc", "failed to allocate memory")
_PACKAGES = ("prunefx", "prunefx.graph", "prunefx.passes", "prunefx.runtime")


def environment_fault(error: BaseException) -> str | None:
    """The one line for `error` if the environment caused it, else None."""
    if out_of_memory(error):
        what = f" ({first_line(error).split(': ', 1)[-1]})" if isinstance(error, MemoryError) and str(error) else ""
        return f"ran out of memory {_step(error)}{what}; {_memory()}"
    if isinstance(error, UnicodeError):
        return (f"a path or text cannot be spelled in this locale's encoding ({sys.getfilesystemencoding()}): "
                "run with a UTF-8 locale (LC_ALL=C.UTF-8) or PYTHONUTF8=1")
    if isinstance(error, OSError):
        return _os_fault(error)
    if isinstance(error, RuntimeError) and "Too many open files" in str(error):
        return f"too many open files ({_open_files()}): raise `ulimit -n` or use fewer --workers"
    return None


def out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(words in text for words in _OUT_OF_MEMORY_WORDS)


def _os_fault(error: OSError) -> str | None:
    where = f" ({printable(str(error.filename))})" if error.filename else ""
    reason = error.strerror or first_line(error)
    if error.errno in _FULL:
        return f"{reason}{where}: free some space, or write elsewhere"
    if error.errno in _DENIED:
        return f"{reason}{where}: a folder prunefx or a library writes to (an output, a cache) is not writable"
    if error.errno in _FILES:
        return f"too many open files ({_open_files()}){where}: raise `ulimit -n` or use fewer --workers"
    if error.errno == errno.EAGAIN:
        return f"the system refused another process or thread ({reason}; {_processes()}): use fewer --workers"
    if error.errno == errno.ENOMEM:
        return f"ran out of memory {_step(error)}; {_memory()}"
    return None


def _step(error: BaseException) -> str:
    """`in FILE:FUNCTION`, the innermost frame of prunefx's own code the error passed through."""
    folders = _our_folders()
    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames if os.path.abspath(frame.filename).startswith(folders)]
    if not ours:
        return "while starting"
    return f"in {os.path.basename(ours[-1].filename)}:{ours[-1].name}"


def _our_folders() -> tuple[str, ...]:
    """The folders of prunefx's packages (graph/, passes/, runtime/ live apart from prunefx/ in a checkout)."""
    folders = []
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        folders += list(spec.submodule_search_locations or []) if spec else []
    return tuple(os.path.abspath(folder) + os.sep for folder in folders)


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def _memory() -> str:
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if limit != resource.RLIM_INFINITY:
        return f"the address-space limit, ulimit -v, is {_gib(limit)}; the machine has {_gib(total)}"
    return f"the machine has {_gib(total)}"


def _open_files() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "no open-file limit" if soft == resource.RLIM_INFINITY else f"the open-file limit, ulimit -n, is {soft}"


def _processes() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    return "no process limit" if soft == resource.RLIM_INFINITY else f"the process limit, ulimit -u, is {soft}"


def unspellable_arguments(argv: list[str]) -> str | None:
    """The first argument this locale could not decode (a path with non-ASCII bytes under LC_ALL=C), whose
    bytes libraries with a C++ core (onnx, ONNX Runtime) refuse in ways that name no file."""
    encoding = sys.getfilesystemencoding()
    for argument in argv:
        try:
            argument.encode(encoding)
        except UnicodeEncodeError:
            if encoding.replace("-", "").lower() == "utf8":  # bytes that are no text in any locale
                return (f"the argument '{printable(argument)}' is not valid UTF-8 text: rename the file to a "
                        "UTF-8 name")
            return (f"the argument '{printable(argument)}' cannot be spelled in this locale's encoding ({encoding}): "
                    "run with a UTF-8 locale (LC_ALL=C.UTF-8) or PYTHONUTF8=1")
    return None
