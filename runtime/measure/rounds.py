"""One timing round of runtime/measure/latency.py's compare_rounds in a process of its own (`processes=True`).

    python .../prunefx/runtime/measure/rounds.py REQUEST ANSWER

Run by its path, not with `-m`, so that nothing imports the prunefx package unless the round needs it: the
package imports torch, 3 to 4 seconds of a fresh interpreter's start on a 2-core machine, and a latency-budget
search starts four rounds at each confirmation. REQUEST is a pickled dict written by the calling process:
- `"kind": "sessions"`: two ONNX Runtime sessions as plain data (runtime/ort/runners.py's OnnxRunnerMaker). This
  file then loads only two standard-library-and-onnxruntime modules of the runtime, timing_loop.py and
  ort/options.py, by their paths; the sessions get the settings every prunefx session has.
- `"kind": "pickled"`: any two picklable makers, with the caller's `sys.path` (so that their functions import
  here as they did there); they run through prunefx's own `timing_round`.
The blocks go to ANSWER. Both files live in a temporary folder the caller made for this round, so nothing
else's pickles are read. A failure prints one line, `Type: message`, as the last line of stderr.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(request: str, answer: str) -> int:
    with open(request, "rb") as file:
        header = pickle.load(file)
    blocks = _time_sessions(header) if header["kind"] == "sessions" else _time_pickled(header)
    Path(answer).write_bytes(pickle.dumps(blocks))
    return 0


def _time_sessions(header: dict) -> tuple[list, list, int, int]:
    loop, options = _neighbour("timing_loop", HERE), _neighbour("options", HERE.parent / "ort")
    run_a, run_b = (_session_runner(options, header[side]) for side in ("a", "b"))
    got_a, got_b = loop.alternate(run_a, run_b, header["warmup"], header["runs"], header["block"], header["settle"],
                                  time.perf_counter, None, header.get("seconds"))
    threads = header["threads"]
    return got_a, got_b, threads or header["a"]["threads"], threads or header["b"]["threads"]


def _session_runner(options, request: dict):
    session = options.cpu_session(request["path"], request["threads"], request["spinning"], request["flush_denormals"])
    names = [arg.name for arg in session.get_inputs()]
    if len(names) != len(request["inputs"]):
        raise ValueError(f"{Path(request['path']).name} takes {len(names)} input(s), got {len(request['inputs'])}")
    for arg, value in zip(session.get_inputs(), request["inputs"]):
        _check_shape(Path(request["path"]).name, arg, tuple(value.shape))
    feed, outputs = dict(zip(names, request["inputs"])), [arg.name for arg in session.get_outputs()]
    return lambda: session.run(outputs, feed)


def _check_shape(file_name: str, arg, shape: tuple[int, ...]) -> None:
    """As runtime/ort/session.py checks a feed (its shape_fits: this file imports no prunefx). ONNX Runtime's own
    message spans lines, and only the first reaches the caller (`_one_line`), cut before it names the dims."""
    fits = not arg.shape or len(arg.shape) == len(shape) and all(not isinstance(want, int) or want == got
                                                                 for want, got in zip(arg.shape, shape))
    if not fits:
        shown = tuple(dim if isinstance(dim, int) else "?" for dim in arg.shape)
        raise ValueError(f"{file_name}: input '{arg.name}' expects shape {shown}, got {shape}")


def _time_pickled(header: dict) -> tuple:
    sys.path[:0] = [entry for entry in header["sys_path"] if entry not in sys.path]
    from prunefx.runtime.measure.latency import (
        timing_round,  # the package, only for makers that need it anyway
    )

    return timing_round(*pickle.loads(header["task"]), seconds=header.get("seconds"))


def _neighbour(name: str, folder: Path):
    """The module `name` of the runtime's `folder`, loaded from its path under a private name."""
    spec = importlib.util.spec_from_file_location(f"_prunefx_round_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


if __name__ == "__main__":
    # Run by path, Python put this file's folder first on sys.path, where its neighbours (errors.py, ...) would
    # shadow modules of the same name: it is not a folder anything should import from.
    if sys.path and Path(sys.path[0]).resolve() == HERE:
        del sys.path[0]
    try:
        sys.exit(main(*sys.argv[1:]))
    except Exception as error:  # one line for the caller's MeasurementError, whatever the maker raised
        print(_one_line(error), file=sys.stderr)
        sys.exit(1)
