"""`make gpu-check`: everything prunefx can check on an NVIDIA GPU, prepared here and run there in one call.

    python3 scripts/gpu_check.py prepare [--smoke]       # on the development machine (reaches PyPI)
    python3 scripts/gpu_check.py run [--smoke] [--out DIR] [--seconds 470]
    python3 scripts/gpu_check.py speedup [--out DIR] [--seconds 240]   # a second call: gpu_speedup goes on

A session's 15 minutes of device time hold a machine's start (a minute or two), this run and the second call, at
once on the warm machine (it goes back after 30 s idle): give the second call the device time `status` says is
left, less a minute.

`prepare` builds what must travel into `.gpu-check/` (ignored by git, carried to the GPU machine): the stamp
of the code (benchmarks/build_stamp.py: the GPU machine's copy has no git), a wheel of prunefx and the wheels of the pure-Python or binary dependencies the GPU machine lacks (it has torch,
torchvision, timm, onnx, onnxruntime, onnxscript, pytest and triton, and no package registry), for its
Python (3.12) or, with --smoke, for this one.

`run` installs those wheels into a private folder (pip --no-index: nothing is fetched) and runs, each step
under its own timeout so that one hung step cannot take the rest with it:
1. `pytest -m gpu` on the installed package (tests/test_module_speed_check.py among them: the written-back
   module as fast as the Program);
2. a capture probe: a ResNet-50 at fp16 captured as a CUDA graph at batch 64 and 128 in a child process
   (a crash there ends the child, not the check);
3. `prunefx prune --speedup 1.5 --backend cuda --batch 32 --choose-by latency` on a ResNet-50 (its report
   gives the latency table's cost), the chosen model re-measured by a separate process with its own timer
   (benchmarks/remeasure_speedup.py); gpu_speedup's budget rows check the backend's default choice;
4. benchmarks/tool_speed.py: calibrated `prunefx prune` of a ResNet-50 with `--device cuda` (the second-order
   math on the GPU), its own process, timed from start to exit, with its report.json's stage seconds (cProfile
   cannot take them on the GPU machine's Python 3.12: benchmarks/tool_profile.py);
5. benchmarks/training_precision.py: the recovery trainer's images per second in bf16 against fp32 on a
   ResNet-50 at batch 64, side by side;
6. benchmarks/gpu_speedup.py in the time left, resumed from the rows of the same code and GPU: those of an
   earlier call on the same warm machine (build/gpu-check-state/), else the committed ones; the rows
   benchmarks/results/gpu_speedup.json lacks run first.
`speedup`, a second call on the warm machine, runs step 6 alone in --seconds, going on where the first stopped.
Each step's output and a summary (gpu_check.json: GPU, driver, torch, cuDNN, each step's exit and seconds, and
the small results files folded in) go to --out, flat, ready to commit to benchmarks/gpu_check/ (its README.md says why not benchmarks/results/).
`--smoke` runs the same steps on a CPU with stand-ins (small models, the ort backend, gpu_speedup's --smoke)
to prove the check end to end before a GPU is spent on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import build_stamp  # noqa: E402

CARRIED = ROOT / ".gpu-check"
SMOKE_WHEELS = ROOT / "build" / "gpu-check-smoke"  # --smoke's wheels (this Python's): .gpu-check stays for the GPU
# what the GPU machine lacks of prunefx's dependencies (and of the benchmarks' and tests' data): name==version;
# jsonschema and what it needs check the reports the GPU tests write against the published schema
MISSING_THERE = ("onnx-graphsurgeon", "pycocotools", "torch-pruning", "threadpoolctl", "foolbox==3.3.4",
                 "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "attrs")
GPU_PYTHON = "3.12"
STAMP = "code_stamp.txt"  # beside the wheels: the code they were built from
STAMP_FILES = "code_files.txt"  # the files it was taken over: the GPU machine has no git to list them
STATE = ROOT / "build" / "gpu-check-state"  # gpu_speedup's rows, kept on a warm GPU machine between calls
COMMITTED = ROOT / "benchmarks" / "gpu_check" / "gpu_speedup.json"
PUBLISHED = ROOT / "benchmarks" / "results" / "gpu_speedup.json"  # a row of each kind it lacks runs first
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


# ---- prepare (development machine) -----------------------------------------------------------------

def _wheels(smoke: bool) -> Path:
    return (SMOKE_WHEELS if smoke else CARRIED) / "wheels"


def prepare(smoke: bool) -> int:
    wheels = _wheels(smoke)
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    _step_or_die([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)])
    target = [] if smoke else ["--python-version", GPU_PYTHON, "--implementation", "cp",
                               *[arg for platform in PLATFORMS for arg in ("--platform", platform)]]
    pinned = [_pinned(name) for name in MISSING_THERE]
    _step_or_die([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", *target, "-d", str(wheels),
                  *pinned])
    files = build_stamp.deciding_files()
    (wheels.parent / STAMP).write_text(build_stamp.digest_of(files) + "\n")
    (wheels.parent / STAMP_FILES).write_text("\n".join(files) + "\n")
    size = sum(f.stat().st_size for f in wheels.iterdir())
    print(f"gpu-check: {len(list(wheels.iterdir()))} wheels, {size / 2**20:.1f} MiB in {wheels.relative_to(ROOT)}"
          f" ({'this Python' if smoke else 'Python ' + GPU_PYTHON})")
    return 0


def _pinned(name: str) -> str:
    """`name` at the version installed here (what the tests pass with), unless it names its own."""
    if "==" in name:
        return name
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name


def _step_or_die(command: list[str]) -> None:
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        sys.exit(f"gpu-check: {' '.join(command[:4])} ... failed (exit {done.returncode})")


# ---- run (GPU machine, or this one with --smoke) ------------------------------------------------------

class Steps:
    """Runs each step as a subprocess with its own timeout within the whole check's `seconds`; keeps a log."""

    shortest = 10.0  # seconds: a step that would get less is skipped, too short to start a model and time it

    def __init__(self, out: Path, seconds: float, env: dict):
        self.out, self.deadline, self.env, self.steps = out, time.monotonic() + seconds, env, []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.contextmanager
    def guarded(self, name: str):
        """A failure between the steps' processes (a file they should have written) is one error entry, and the
        check goes on to the next step."""
        try:
            yield
        except Exception as error:  # any of them: the summary names it
            self.steps.append({"step": name, "error": f"{type(error).__name__}: {error}"[:300]})

    def run(self, name: str, command: list[str], timeout: float, log: str | None = None,
            env: dict | None = None) -> int | None:
        timeout = min(timeout, self.left() - 5)
        if timeout < self.shortest:
            self.steps.append({"step": name, "skipped": "no time left"})
            return None
        start = time.monotonic()
        print(f"gpu-check: {name} (at most {timeout:.0f} s)", flush=True)
        # straight into the log as it is printed: a step killed at its timeout, or a call the device cut off, keeps
        # what it wrote
        with open(self.out / log, "w+b") if log else tempfile.TemporaryFile() as sink:
            # a session of its own, so that a timeout stops the step's children too (gpu_speedup's Torch-Pruning
            # searches): left running, they would hold CPU, memory and the GPU through every later step
            process = subprocess.Popen(command, env=env or self.env, stdout=sink, stderr=subprocess.STDOUT,
                                       cwd=self.out, start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
            sink.seek(0)
            output = sink.read().decode(errors="replace")
        seconds = time.monotonic() - start
        tail = output.strip().splitlines()[-3:]
        self.steps.append({"step": name, "exit": code, "timed_out": code is None, "seconds": round(seconds, 1),
                           "tail": tail})
        print(f"gpu-check: {name}: {'timed out' if code is None else f'exit {code}'} in {seconds:.0f} s", flush=True)
        return code


def install(site: Path, smoke: bool) -> dict:
    """The carried wheels installed into `site` (nothing fetched); the environment that imports them first."""
    wheels = sorted(str(w) for w in _wheels(smoke).glob("*.whl"))
    if not wheels:
        sys.exit(f"gpu-check: no wheels in {_wheels(smoke)}: run `make gpu-check-prepare` first (and carry "
                 f".gpu-check to the GPU machine)")
    _step_or_die([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                  "--target", str(site), *wheels])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONSAFEPATH", None)
    return env


def _stale_wheel(smoke: bool) -> bool | None:
    """Whether the checkout's code differs from the code the wheel was built from (the tests come from the checkout,
    prunefx from the wheel): `make gpu-check-prepare` was not run after the last edit. None where it cannot tell."""
    folder = _wheels(smoke).parent
    if not (folder / STAMP_FILES).is_file():
        return None
    files = (folder / STAMP_FILES).read_text().split()
    stale = build_stamp.digest_of(files, ROOT) != (folder / STAMP).read_text().strip()
    if stale:
        print("gpu-check: the checkout's code is not the wheel's: run `make gpu-check-prepare` right before the "
              "call; the tests below run against the older wheel", flush=True)
    return stale


def gpu_test_files() -> list[str]:
    """The test files that hold `gpu` tests: collecting the others would import packages a bare GPU machine
    lacks (ultralytics, segmentation-models-pytorch), and one failed import stops the whole collection."""
    marked = re.compile(r"^@pytest\.mark\.gpu$", re.MULTILINE)
    return [str(path) for path in sorted((ROOT / "tests").glob("test_*.py")) if marked.search(path.read_text())]


def facts(env: dict) -> dict:
    probe = ("import json, torch, prunefx; c = torch.cuda.is_available(); print(json.dumps({'prunefx': "
             "prunefx.__file__, 'torch': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': "
             "torch.backends.cudnn.version(), 'gpu': torch.cuda.get_device_name() if c else None}))")
    done = subprocess.run([sys.executable, "-P", "-c", probe], env=env, capture_output=True, text=True, check=False)
    found = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip()[-300:]}
    driver = shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True,
        check=False).stdout.strip()
    return {**found, "driver": driver or None, "python": sys.version.split()[0]}


CAPTURE_PROBE = """
import json, sys, torch, torchvision
from prunefx.runtime.cuda.graph import GpuModel, CudaDevice
from prunefx.graph import capture
batch = int(sys.argv[1])
model = torchvision.models.resnet50().eval()
program = capture(model, torch.randn(batch, 3, 224, 224), name="resnet50").eval()
gpu = GpuModel(program, precision="fp16", device=CudaDevice())
print(json.dumps({"batch": batch, "mode": gpu.mode, "ms": gpu.time_once(), "timing": gpu.timing()}))
"""


def run(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-site-") as site:
        env = install(Path(site), args.smoke)
        steps = Steps(out, args.seconds, env)
        python = [sys.executable, "-P"]  # -P: the checkout's own prunefx/ folder must not shadow the wheel
        summary = {"smoke": args.smoke, "machine": facts(env), "stale": _stale_wheel(args.smoke)}
        try:
            _every_step(steps, python, env, args.smoke)
        finally:  # whatever broke between steps, what ran is reported
            summary["steps"] = steps.steps
            summary["results"] = _folded(out, ("gpu_remeasure.json", "gpu_training_precision.json"))
            (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [s["step"] for s in steps.steps
              if (s.get("exit") not in (0, None) and not s.get("refused")) or s.get("timed_out") or s.get("error")]
    print(f"gpu-check: wrote {out / 'gpu_check.json'}; " + (f"failed: {', '.join(failed)}" if failed else "all ran"))
    return 1 if failed else 0


def _every_step(steps: Steps, python: list[str], env: dict, smoke: bool) -> None:
    bench = ROOT / "benchmarks"
    # room above what the last check's pass took (since then its table test also times two ViT-B attentions): a
    # slower pass must not be a killed step; the later steps share what is left of the check's seconds
    steps.run("pytest -m gpu", [*python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--durations=8",
                                "--rootdir", str(ROOT), *gpu_test_files()], 280, log="gpu_pytest.log")
    if smoke:
        steps.steps.append({"step": "capture probe", "skipped": "no GPU (smoke)"})
    else:
        for batch in (64, 128):
            steps.run(f"capture probe at batch {batch}", [*python, "-c", CAPTURE_PROBE, str(batch)], 60,
                      env=dict(env, PRUNEFX_CUDA_CAPTURE_BATCH_LIMIT="100000"))
    with steps.guarded("budget"):
        _budget(steps, python, bench, smoke)
    with steps.guarded("calibrated prune"):
        _calibrated(steps, python, bench, smoke)
    training = ["--model", "prunefx:resnet20", "--input-shape", "16x1x28x28", "--device", "cpu", "--steps", "3",
                "--warmup", "1", "--rounds", "2"] if smoke else ["--input-shape", "64x3x224x224"]
    steps.run("training bf16 against fp32", [*python, str(bench / "training_precision.py"), *training,
                                             "--out", str(steps.out / "gpu_training_precision.json")], 120)
    with steps.guarded("gpu_speedup"):
        gpu_speedup(steps, python, smoke)


def _budget(steps: Steps, python: list[str], bench: Path, smoke: bool) -> None:
    """prune --speedup --choose-by latency on the cuda backend (ort on a CPU for --smoke), then the independent
    re-measure."""
    reference, batch, speedup, backend = (("prunefx:resnet20", 8, "1.2", "ort") if smoke else
                                          ("torchvision:resnet50", 32, "1.5", "cuda"))
    shape = f"{batch}x1x28x28" if smoke else f"{batch}x3x224x224"
    # not in --out: what comes back from the GPU machine is at most eight files, and a step killed at its timeout
    # leaves its staging folder behind
    with tempfile.TemporaryDirectory(prefix="gpu-check-budget-") as folder:
        _budget_in(steps, python, bench, Path(folder), reference, shape, batch, speedup, backend)


def _budget_in(steps: Steps, python: list[str], bench: Path, folder: Path, reference: str, shape: str, batch: int,
               speedup: str, backend: str) -> None:
    dense = folder / "budget_dense.pt2"
    save_dense = ("import sys; from prunefx.loading import model_and_program; "
                  "model_and_program(sys.argv[1], input_shape=sys.argv[2])[1].eval().save(sys.argv[3])")
    steps.run("dense model", [*python, "-c", save_dense, reference, shape, str(dense)], 120)
    chosen_folder = folder / "budget_prune"
    code = steps.run(f"prune --speedup {speedup} --backend {backend} --batch {batch} --choose-by latency",
                     [*python, "-m", "prunefx", "prune", str(dense), "--speedup", speedup, "--backend", backend,
                      "--batch", str(batch), "--choose-by", "latency", "-o", str(chosen_folder)], 240)
    if _refused(steps.steps[-1]):
        steps.steps[-1]["refused"] = True
    if code == 0:
        shutil.copy(chosen_folder / "report.json", steps.out / "gpu_prune_report.json")
        steps.run("re-measure with its own timer", [*python, str(bench / "remeasure_speedup.py"), str(dense),
                                                    str(chosen_folder / "model.pt2"), "--batch", str(batch),
                                                    "--json", str(steps.out / "gpu_remeasure.json")], 90)


def _refused(entry: dict) -> bool:
    """A budget out of reach: a finding of the check, in its one line, not a broken step. Any other exit 2 (a
    missing dense model, an environment fault, a bad argument) is a broken step."""
    return entry.get("exit") == 2 and any("cannot reach" in line for line in entry.get("tail", ()))


def _calibrated(steps: Steps, python: list[str], bench: Path, smoke: bool) -> None:
    """tool_speed's calibrated case with --device cuda (a CPU stand-in for --smoke). Only its .json is kept:
    what comes back from the GPU machine is limited in files, and the .md is rebuilt from the .json."""
    model, device, repeat = ("torchvision:resnet18", "cpu", "1") if smoke else ("resnet50", "cuda", "1")
    # both scripts import benchmarks/common.py; the wheel's prunefx stays first on the path
    env = dict(steps.env, PYTHONPATH=os.pathsep.join([steps.env["PYTHONPATH"], str(bench)]))
    with tempfile.TemporaryDirectory(prefix="gpu-check-tool-speed-") as folder:
        steps.run(f"calibrated prune on {device}", [
            *python, str(bench / "tool_speed.py"), "--pair", model, "calibrated", "--device", device,
            "--repeat", repeat, "--timeout", "60", "--threads", str(min(os.cpu_count() or 1, 16)),
            "--output-dir", folder, "--results-name", "gpu_tool_speed"], 200, env=env)
        made = Path(folder) / "gpu_tool_speed.json"
        if made.exists():
            shutil.copy(made, steps.out / made.name)


def _folded(out: Path, names: tuple[str, ...]) -> dict:
    """Small results files read into the summary and removed: what comes back from the GPU machine is at most
    eight files. One that does not read (a step killed while writing it) is kept as it is, and said."""
    folded = {}
    for name in names:
        path = out / name
        if path.is_file():
            try:
                folded[path.stem] = json.loads(path.read_text())
            except ValueError as error:
                folded[path.stem] = {"unreadable": str(error)[:200]}
                continue
            path.unlink()
    return folded


def gpu_speedup(steps: Steps, python: list[str], smoke: bool) -> None:
    """benchmarks/gpu_speedup.py until the time is up, on from the rows of the same code and GPU: an earlier
    call's on this machine, else the committed ones (gpu_speedup keeps only rows that match). It saves after
    every row; its file is kept in STATE for the next call."""
    stamp = (_wheels(smoke).parent / STAMP).read_text().strip()
    state = STATE / ("smoke" if smoke else "") / "gpu_speedup.json"
    earlier = state if state.is_file() else COMMITTED
    # gpu_speedup starts a row only where one of its kind has fitted: its limit can run close to the step's
    settings = ["--smoke", "--runs", "3"] if smoke else ["--time-limit", str(max(steps.left() - 20, 30))]
    quiet = dict(steps.env, PYTHONWARNINGS="ignore::FutureWarning,ignore::UserWarning")  # its log: rows, not torch's
    steps.run("gpu_speedup", [*python, str(ROOT / "benchmarks" / "gpu_speedup.py"), *settings, "--out",
                              str(steps.out), "--code", stamp, "--resume", str(earlier), "--missing-first",
                              str(PUBLISHED)], steps.left() - 5,
              log="gpu_speedup.log", env=quiet)
    made = steps.out / "gpu_speedup.json"
    if made.is_file():
        state.parent.mkdir(parents=True, exist_ok=True)
        partial = state.with_name(f".{state.name}.partial")  # the next call resumes from it: never half a file
        shutil.copy(made, partial)
        os.replace(partial, state)


def speedup_only(args) -> int:
    """`speedup`: gpu_speedup alone, going on from the last call's rows (a second call on the warm machine)."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-site-") as site:
        steps = Steps(out, args.seconds, install(Path(site), args.smoke))
        gpu_speedup(steps, [sys.executable, "-P"], args.smoke)
    (step,) = steps.steps
    return 0 if step.get("exit") == 0 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("prepare", "run", "speedup"))
    parser.add_argument("--smoke", action="store_true", help="on a CPU, with stand-ins: proves the check end to end")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "build" / "gpu-check"))
    parser.add_argument("--seconds", type=float, default=None, help="the whole run's limit (run: 470, speedup: 240)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 240.0 if args.action == "speedup" else 470.0
    return {"prepare": lambda: prepare(args.smoke), "run": lambda: run(args),
            "speedup": lambda: speedup_only(args)}[args.action]()


if __name__ == "__main__":
    sys.exit(main())
