"""trtexec as a backend: build and time an ONNX file through the `trtexec` command (JetPack ships it on
every Jetson board, at /usr/src/tensorrt/bin/trtexec), and read its results.

`build_arguments` and `timing_arguments` are its two command lines, pure functions of the options, the TensorRT
version and the file (precision as runtime/tensorrt/plan.network_plan): one builds the engine, the other times it,
so that a Jetson's power is sampled while the engine runs and never while it is built. `run_trtexec` runs both
(recording the board's power state) and reads the output with runtime/tensorrt/trtexec_output.py.
`TrtexecResult.latency` is the GPU compute time, so both TensorRT backends compare. The flags per TensorRT
version and which latency counts: see docs/tensorrt.md, 'How an engine is built'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prunefx.graph.whole_files import replaced_together
from prunefx.runtime.errors import BackendUnavailableError, DeviceToolError, MeasurementError
from prunefx.runtime.measure.latency import LatencyStats
from prunefx.runtime.tensorrt.input_shapes import InputShapes, trtexec_shapes
from prunefx.runtime.tensorrt.jetson import JetsonState, TegrastatsSampler, is_jetson, jetson_state
from prunefx.runtime.tensorrt.plan import (
    NetworkPlan,
    OnnxTypes,
    check_precision,
    network_plan,
    onnx_types,
    tensorrt_major,
)
from prunefx.runtime.tensorrt.trtexec_output import (
    TrtexecSummary,
    parse_performance_summary,
    parse_trtexec_profile,
    tensorrt_version_in,
)

JETPACK_TRTEXEC = Path("/usr/src/tensorrt/bin/trtexec")
INSTALL_TRTEXEC = ("trtexec ships with TensorRT: on a Jetson board install JetPack (`sudo apt install nvidia-jetpack`; "
                   f"it is then at {JETPACK_TRTEXEC}), on x86-64 unpack the TensorRT tar or install the "
                   "`tensorrt` Debian packages (bin/trtexec); or give its path with --trtexec")
ASSUMED_VERSION = "10.3.0"
FLOAT32_FILE = OnnxTypes(has_qdq=False, float16=False)
_WEAK_FLAGS = {"FP16": "--fp16", "INT8": "--int8"}


@dataclass(frozen=True)
class TrtexecOptions:
    precision: str = "fp32"
    sparse: bool = False
    warmup_ms: int = 500            # trtexec --warmUp is in milliseconds
    iterations: int = 200           # at least this many timed queries ...
    duration_s: float = 3.0         # ... and at least this long
    use_cuda_graph: bool = False
    no_data_transfers: bool = True  # time the engine, not PCIe/unified-memory copies
    dla_core: int | None = None     # Jetson AGX/NX deep-learning accelerator, with GPU fallback
    input_shapes: InputShapes = ()  # a file with dynamic inputs: the shapes built and timed (input_shapes.py)

    def __post_init__(self):
        check_precision(self.precision)
        if self.iterations < 1 or self.warmup_ms < 0 or self.duration_s < 0:
            raise MeasurementError("trtexec needs iterations >= 1, warm-up >= 0 ms and duration >= 0 s")


def precision_arguments(plan: NetworkPlan, tensorrt_version: str) -> list[str]:
    """trtexec's precision flags for `plan`: `--stronglyTyped` on TensorRT 10 (11 is always strongly typed and
    needs nothing), or the weakly typed `--fp16` / `--int8` where the plan still uses them."""
    if plan.lower_to_fp16:
        raise MeasurementError("TensorRT >= 11 has no --fp16: lower the ONNX file to an FP16 graph first "
                               "(runtime/onnx/float16.lower_to_float16; run_trtexec does it)")
    if plan.strongly_typed:
        return ["--stronglyTyped"] if tensorrt_major(tensorrt_version) == 10 else []
    return [_WEAK_FLAGS[name] for name in plan.builder_flags if name in _WEAK_FLAGS]


def build_arguments(onnx_path: str | os.PathLike, options: TrtexecOptions = TrtexecOptions(), *,
                    engine_path: str | os.PathLike, executable: str = "trtexec",
                    timing_cache: str | os.PathLike | None = None, detailed: bool = False,
                    tensorrt_version: str = ASSUMED_VERSION, types: OnnxTypes = FLOAT32_FILE) -> list[str]:
    """The trtexec command line that builds `onnx_path` (whose Q/DQ and FP16 content is `types`) into
    `engine_path` and times nothing: the build, minutes on a Jetson, stays out of the power a timing records, and
    one engine serves every timing of the file. `detailed`: layer names and tactics for --exportLayerInfo."""
    arguments = [executable, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--skipInference"]
    arguments += precision_arguments(network_plan(tensorrt_version, options.precision, types), tensorrt_version)
    arguments.append(f"--sparsity={'enable' if options.sparse else 'disable'}")
    arguments += _shape_arguments(options)
    if options.dla_core is not None:
        arguments += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    if timing_cache is not None:
        arguments.append(f"--timingCacheFile={timing_cache}")
    if detailed:
        arguments.append("--profilingVerbosity=detailed")
    return arguments


def timing_arguments(engine_path: str | os.PathLike, options: TrtexecOptions = TrtexecOptions(), *,
                     executable: str = "trtexec", profile_path: str | os.PathLike | None = None,
                     layer_info_path: str | os.PathLike | None = None,
                     tensorrt_version: str = ASSUMED_VERSION) -> list[str]:
    """The trtexec command line that times the engine at `engine_path`. With `profile_path`, per-layer times are
    exported from a separate profiling run (so the summary is not slowed by the profiler) and `layer_info_path`
    gets the engine inspector's JSON."""
    arguments = [executable, f"--loadEngine={engine_path}", f"--warmUp={options.warmup_ms}",
                 f"--iterations={options.iterations}", f"--duration={options.duration_s:g}",
                 _percentiles(tensorrt_version)]
    arguments += _shape_arguments(options) + _run_arguments(options, tensorrt_major(tensorrt_version))
    if options.dla_core is not None:
        arguments.append(f"--useDLACore={options.dla_core}")
    if profile_path is not None or layer_info_path is not None:
        arguments.append("--profilingVerbosity=detailed")
        if tensorrt_major(tensorrt_version) < 11:  # 11 always profiles in a run of its own
            arguments.append("--separateProfileRun")
    if profile_path is not None:
        arguments += ["--dumpProfile", f"--exportProfile={profile_path}"]
    if layer_info_path is not None:
        arguments.append(f"--exportLayerInfo={layer_info_path}")
    return arguments


def _shape_arguments(options: TrtexecOptions) -> list[str]:
    # without --shapes, trtexec sets every dynamic dimension to 1, and says so only in its log
    return [f"--shapes={trtexec_shapes(options.input_shapes)}"] if options.input_shapes else []


def _percentiles(tensorrt_version: str) -> str:
    """90, 95 and 99 % from TensorRT 8.6, whose trtexec reads a list; before it, one number (8.5's trtexec took
    the leading 90 of "90,95,99" and printed the 90th percentile alone): the 99th."""
    minor = (str(tensorrt_version).split(".") + ["0"])[1]
    before_lists = (tensorrt_major(tensorrt_version), int(minor) if minor.isdigit() else 0) < (8, 6)
    return "--percentile=99" if before_lists else "--percentile=90,95,99"


def _run_arguments(options: TrtexecOptions, major: int) -> list[str]:
    """CUDA graphs and data transfers as `options` ask, from each version's defaults: both off before 11; from 11
    CUDA graphs on and transfers off (11.1's help: "--useCudaGraph [Deprecated] CUDA graph is now enabled by
    default", "--noDataTransfers [Deprecated] DMA transfers are now disabled by default")."""
    if major >= 11:
        return (["--noCudaGraph"] if not options.use_cuda_graph else []) + \
               (["--includeDataTransfers"] if not options.no_data_transfers else [])
    return (["--useCudaGraph"] if options.use_cuda_graph else []) + \
           (["--noDataTransfers"] if options.no_data_transfers else [])


# ---- running ------------------------------------------------------------------------------------

def find_trtexec(executable: str | None = None) -> str:
    """Path of trtexec: the one given, on PATH, or where JetPack puts it; else a clear error."""
    if executable:
        given = os.path.expanduser(executable)  # bash leaves the `~` of `--trtexec=~/trtexec` alone
        if os.path.isfile(given):
            # that file, by its absolute path: run as a bare name, subprocess would look it up on PATH instead
            program = os.path.abspath(given)
            if not os.access(program, os.X_OK):
                raise BackendUnavailableError(f"trtexec {given} is not executable (chmod +x {given}, or give "
                                              "the trtexec program)")
            return program
        found = shutil.which(given)
        if found:
            return found
        if os.path.isdir(given):
            raise BackendUnavailableError(f"trtexec {given} is a folder, not the trtexec program")
        raise BackendUnavailableError(f"trtexec not found at {given}: {INSTALL_TRTEXEC}")
    found = shutil.which("trtexec") or (str(JETPACK_TRTEXEC) if JETPACK_TRTEXEC.is_file() else None)
    if found is None:
        raise BackendUnavailableError(f"the trtexec backend needs the `trtexec` program, which is not on PATH: "
                                      f"{INSTALL_TRTEXEC}")
    return found


@dataclass
class TrtexecResult:
    summary: TrtexecSummary
    command: list[str]                        # the timing run's
    build_command: list[str] = field(default_factory=list)
    jetson: JetsonState | None = None
    power: dict | None = None                 # TegrastatsSampler.summary() while trtexec timed the engine
    layer_times: dict[str, float] = field(default_factory=dict)
    profiled_runs: int = 0
    layer_info: str | None = None             # the engine inspector JSON, when profiled

    @property
    def latency(self) -> LatencyStats:
        return self.summary.latency()

    def to_dict(self) -> dict:
        return {"command": self.command, "build_command": self.build_command,
                "throughput_qps": self.summary.throughput_qps, "timed_queries": self.summary.timed_queries,
                "tensorrt_version": self.summary.tensorrt_version, "metrics": self.summary.metrics,
                "jetson": asdict(self.jetson) if self.jetson else None, "power": self.power}


def trtexec_version(program: str, timeout_s: float = 120) -> str | None:
    """The TensorRT version of `program`, from the `[TensorRT vNNNNNN]` tag it prints on every run (`--help`
    builds nothing); None when it printed none."""
    try:
        done = subprocess.run([program, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return tensorrt_version_in(done.stdout)


def run_trtexec(onnx_path: str | os.PathLike, options: TrtexecOptions = TrtexecOptions(), *,
                executable: str | None = None, profile: bool = False, power_interval_ms: int = 100,
                timeout_s: float = 1800, workdir: str | os.PathLike | None = None) -> TrtexecResult:
    """Build and time `onnx_path` with trtexec; on Jetson, with power mode, clocks and power recorded.
    The precision flags follow the trtexec's own TensorRT version (ASSUMED_VERSION when it does not say).
    `workdir`: where to keep what trtexec wrote (the engine, the FP16 lowering, the profiles), each file moved
    in whole once trtexec succeeded; a failed or killed run leaves nothing there."""
    program = find_trtexec(executable)
    version = trtexec_version(program) or ASSUMED_VERSION
    with tempfile.TemporaryDirectory(prefix="prunefx-trtexec-") as tmp:
        folder = Path(tmp)
        engine = build_with_trtexec(onnx_path, options, program, version, folder, detailed=profile,
                                    timeout_s=timeout_s)
        result = time_with_trtexec(engine, options, program, version, profile=profile,
                                   power_interval_ms=power_interval_ms, timeout_s=timeout_s)
        if workdir is not None:
            _keep(folder, Path(workdir))
    return result


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    command: list[str]


def build_with_trtexec(onnx_path: str | os.PathLike, options: TrtexecOptions, program: str, version: str,
                       folder: Path, *, detailed: bool = False, timing_cache: Path | None = None,
                       timeout_s: float = 1800) -> BuiltEngine:
    """The engine of `onnx_path`, built by trtexec into `folder` (beside the FP16 lowering it may need)."""
    source, types = _explicit_file(Path(onnx_path), options, version, folder)
    engine = folder / "model.engine"
    command = build_arguments(source, options, engine_path=engine, executable=program, timing_cache=timing_cache,
                              detailed=detailed, tensorrt_version=version, types=types)
    _run(command, timeout_s)
    return BuiltEngine(engine, command)


def time_with_trtexec(engine: BuiltEngine, options: TrtexecOptions, program: str, version: str, *,
                      profile: bool = False, power_interval_ms: int = 100, timeout_s: float = 1800) -> TrtexecResult:
    """trtexec's timing of a built engine; on Jetson, the board's power sampled while it runs, and only then.
    With `profile`, its per-layer times and layer information, written beside the engine."""
    folder = engine.path.parent
    paths = {"profile_path": folder / "profile.json", "layer_info_path": folder / "layers.json"} if profile else {}
    command = timing_arguments(engine.path, options, executable=program, tensorrt_version=version, **paths)
    jetson = jetson_state() if is_jetson() else None
    sampler = TegrastatsSampler(power_interval_ms) if jetson is not None else None
    with sampler if sampler is not None else _nothing():
        done = _run(command, timeout_s)
    result = TrtexecResult(summary=parse_performance_summary(done.stdout), command=command,
                           build_command=engine.command, jetson=jetson,
                           power=sampler.summary() if sampler is not None else None)
    if profile:
        result.layer_times, result.profiled_runs = parse_trtexec_profile(paths["profile_path"].read_text())
        result.layer_info = paths["layer_info_path"].read_text()
    return result


def _keep(folder: Path, workdir: Path) -> None:
    """Each file of `folder` copied into `workdir` whole (graph/whole_files.py): an engine cut short would load.
    None replaces its namesake until all are copied, so that a copy cut short never leaves this run's layer
    times beside the last run's engine (files this run did not write stay as the last run left them)."""
    items = [item for item in sorted(folder.iterdir()) if item.is_file()]
    with replaced_together([workdir / item.name for item in items]) as partials:
        for item, partial in zip(items, partials):
            shutil.copyfile(item, partial)


def _explicit_file(onnx_path: Path, options: TrtexecOptions, version: str, folder: Path) -> tuple[Path, OnnxTypes]:
    """The file trtexec builds and its types: `onnx_path`, or its FP16 lowering where the plan asks for one."""
    types = onnx_types(onnx_path)
    if not network_plan(version, options.precision, types).lower_to_fp16:
        return onnx_path, types
    from prunefx.runtime.onnx.float16 import lower_to_float16

    lowered = lower_to_float16(onnx_path, folder / f"{onnx_path.stem}.fp16.onnx")
    return lowered, onnx_types(lowered)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        raise DeviceToolError(f"trtexec did not finish within {timeout_s:.0f} s: {' '.join(command)}") from error
    if done.returncode != 0:
        tail = " | ".join(line for line in done.stdout.strip().splitlines()[-4:])
        raise DeviceToolError(f"trtexec failed with status {done.returncode}: {tail}")
    return done
