"""GPU speed-ups at equal MACs, prunefx against Torch-Pruning, and prunefx's latency budgets on the cuda backend.

    .venv/bin/python benchmarks/gpu_speedup.py [--models REF ...] [--batches 1 8 32] [--precision fp16]
        [--runs 50] [--time-limit 480] [--out FOLDER] [--smoke]

For each model (random weights): the dense Program, prunefx's `prune --macs 0.5` defaults (remove_channels
with {"macs": 0.5}), and Torch-Pruning's magnitude pruner at the same MACs fraction, with its default widths
and with round_to=8, are timed against the dense model on the cuda backend (runtime/backends/cuda.py: fp16,
channels_last, CUDA-graph replays timed with CUDA events, dense and variant alternated; each row is the
backend's confirmation, 4x the runs). Then prunefx meets `--speedup S` budgets on the same backend (S = 1.3
at batch 1, 1.5 at batch 32) and each chosen model is measured again by a fresh pair (models prepared anew)
and by a separate process with its own timer (benchmarks/remeasure_speedup.py), which alone is judged
against [0.95 S, 1.25 S]. Work past `--time-limit` seconds is listed as skipped, not run.

Writes benchmarks/results/gpu_speedup.{json,md} with the GPU's name, driver and torch version. It needs an
NVIDIA GPU; `--smoke` checks the script on a CPU instead: one small model, a CPU stand-in for the device
(perf_counter timing, no graph), results in a temporary folder, never in benchmarks/results.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, markdown_table  # noqa: E402

import prunefx  # noqa: E402
from prunefx.graph import capture, count  # noqa: E402
from prunefx.graph.errors import PrunefxError  # noqa: E402
from prunefx.loading import model_and_program  # noqa: E402
from prunefx.passes.remove_channels import remove_channels  # noqa: E402
from prunefx.runtime.backends import Settings  # noqa: E402
from prunefx.runtime.backends.cuda import CudaBackend  # noqa: E402
from prunefx.runtime.cuda.graph import CudaDevice  # noqa: E402

cuda_backend = importlib.import_module("prunefx.runtime.backends.cuda")
MODELS = ("torchvision:resnet101", "torchvision:convnext_small", "torchvision:swin_t", "torchvision:vit_b_16",
          "torchvision:efficientnet_v2_s", "timm:mobilenetv4_conv_medium")
SMOKE_MODEL, SMOKE_BATCHES = "prunefx:resnet20", (1, 4)
BUDGETS = {1: 1.3, 32: 1.5}  # batch -> speed-up asked of `prune --speedup`
MACS = 0.5
BISECTION_STEPS = 6


class CpuStandIn(CudaDevice):
    """The device path run on a CPU for --smoke: float32 on the CPU, no graph, perf_counter milliseconds."""

    warm_seconds = 0.0

    def available(self) -> bool:
        return True

    def describe(self) -> dict:
        return {"gpu": "none (CPU stand-in, --smoke)", "torch": torch.__version__, "cuda": None}

    def place(self, module, inputs, dtype):
        return module, tuple(inputs)

    def compile(self, module):
        return module

    def capture(self, run, iterations=1):
        return run

    def time(self, run, calls=1) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        return 1e3 * (time.perf_counter() - start) / calls

    def release(self) -> None:
        pass

    def peak_memory(self) -> None:
        return None


def driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    answer = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False)
    return answer.stdout.strip().splitlines()[0] if answer.returncode == 0 and answer.stdout.strip() else None


# ---- the variants at equal MACs -----------------------------------------------------------------

def torch_pruning(module: torch.nn.Module, example: torch.Tensor, fraction: float, round_to: int | None):
    """Torch-Pruning's magnitude pruner (L2) at the pruning ratio whose MACs fraction (by its own counter) is
    closest to `fraction`, found by bisection; the classifier is kept whole."""
    import torch_pruning as tp

    dense_macs, _ = tp.utils.count_ops_and_params(module, example)
    low, high, best = 0.0, 0.95, None
    for _ in range(BISECTION_STEPS):
        ratio = (low + high) / 2
        pruned = copy.deepcopy(module)
        classifier = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1:]
        attention = _attention_modules(pruned)
        heads = {m.qkv: m.num_heads for m in attention}  # Torch-Pruning keys heads by the qkv projection
        pruner = tp.pruner.MagnitudePruner(pruned, example, importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=ratio, round_to=round_to, ignored_layers=classifier,
                                           **({"num_heads": heads} if heads else {}))
        pruner.step()
        for m in attention:  # the head count stays, each head narrower: the module's reshape must follow
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):  # newer timm reshapes by it
                m.attn_dim = m.num_heads * m.head_dim
        kept = tp.utils.count_ops_and_params(pruned, example)[0] / dense_macs
        if best is None or abs(kept - fraction) < abs(best[1] - fraction):
            best = (pruned, kept)
        low, high = (ratio, high) if kept > fraction else (low, ratio)
    return best[0].eval()


def _attention_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """timm-style attention: a fused qkv Linear and an integer head count (torchvision's nn.MultiheadAttention
    Torch-Pruning handles by itself)."""
    return [m for m in module.modules() if isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "qkv", None), torch.nn.Linear) and hasattr(m, "head_dim")]


def variants(reference: str, batch: int, *, torch_pruning_too: bool = True) -> dict:
    """name -> Program at `batch`: dense, prunefx (--macs 0.5 defaults), Torch-Pruning default and round_to=8
    (an error text in place of a Program where Torch-Pruning fails on the model)."""
    module, dense = model_and_program(reference, input_shape=_shape(reference, batch))
    dense = dense.eval()
    found = {"dense": dense, "prunefx": remove_channels(dense.clone(), config={"macs": MACS}).program}
    kept = count(found["prunefx"]).macs / count(dense).macs
    for name, round_to in (("torch-pruning", None), ("torch-pruning r8", 8)):
        if not torch_pruning_too:
            continue
        try:
            one = dense.example_inputs[0][:1]
            pruned = torch_pruning(copy.deepcopy(module).eval(), one, kept, round_to)
            found[name] = capture(pruned, dense.example_inputs, name=f"{dense.name} {name}").eval()
        except Exception as error:  # Torch-Pruning raises many types on models it cannot trace
            found[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
    return found


def _shape(reference: str, batch: int) -> str:
    size = 28 if reference.startswith("prunefx:") else 224
    channels = 1 if reference.startswith("prunefx:") else 3
    return f"{batch}x{channels}x{size}x{size}"


def equal_macs_rows(reference: str, batches: list[int], settings: Settings, device) -> list[dict]:
    """One row per batch: each variant's MACs fraction and confirmed speed-up over dense on the cuda backend."""
    built = variants(reference, max(batches))
    rows = []
    for batch in sorted(batches):
        pair = CudaBackend(device).latency_pair(Settings(**{**vars(settings), "batch": batch}))
        try:
            at_batch = built
            pair(built["dense"], built["dense"])  # cuts the captured batch: refuses where it cannot
        except PrunefxError:  # a model that folds the batch into another dim (Swin): built again at it
            at_batch = variants(reference, batch)
        rows.append(_row(reference, batch, at_batch, pair))
    return rows


def _row(reference: str, batch: int, built: dict, pair) -> dict:
    dense = built["dense"]
    row = {"model": reference, "batch": batch, "notes": list(getattr(pair, "notes", []))}
    for name, program in built.items():
        if name == "dense":
            continue
        if isinstance(program, str):
            row[name] = {"error": program}
            continue
        timing = pair.confirm(dense, program)  # each variant beside its own run of the dense model
        row.setdefault("dense_ms", timing.dense_ms)
        row[name] = {"ms": timing.ms, "dense_ms": timing.dense_ms, "speedup": timing.speedup, "low": timing.low,
                     "high": timing.high, "macs_kept": count(program).macs / count(dense).macs}
    return row


# ---- budgets --------------------------------------------------------------------------------------

def budget_row(reference: str, batch: int, speedup: float, settings: Settings, device) -> dict:
    """`--speedup S --backend cuda --batch B` through prunefx.meet_budget, re-measured by a fresh pair and,
    judged against [0.95 S, 1.25 S], by a separate process with its own timer."""
    _, dense = model_and_program(reference, input_shape=_shape(reference, batch))
    dense = dense.eval()
    at = Settings(**{**vars(settings), "batch": batch})
    row = {"model": reference, "batch": batch, "speedup_asked": speedup}
    try:
        chosen, outcome = prunefx.meet_budget(dense, speedup=speedup, backend="cuda", precision=at.precision,
                                              batch=batch, measurer=CudaBackend(device).latency_pair(at))
    except PrunefxError as error:
        return {**row, "refused": str(error).splitlines()[0]}
    again = CudaBackend(device).latency_pair(at).confirm(dense, chosen)
    independent = independent_speedup(dense, chosen, batch, settings.precision or "fp16")
    judged = independent.get("speedup")  # only the other process's timer can catch a flaw of ours
    return {**row, "search_speedup": getattr(outcome.measured, "speedup", None),
            "remeasured": again.speedup, "independent": independent,
            "macs_kept": count(chosen).macs / count(dense).macs,
            "within": None if judged is None else 0.95 * speedup <= judged <= 1.25 * speedup}


def independent_speedup(dense, chosen, batch: int, precision: str, timeout: float = 300) -> dict:
    """The speed-up measured again by a separate process with its own timer (benchmarks/remeasure_speedup.py),
    or the reason it could not be."""
    with tempfile.TemporaryDirectory(prefix="gpu-speedup-remeasure-") as tmp:
        paths = [str(program.save(Path(tmp) / f"{name}.pt2")) for name, program in (("dense", dense),
                                                                                      ("chosen", chosen))]
        script = Path(__file__).resolve().parent / "remeasure_speedup.py"
        try:
            done = subprocess.run([sys.executable, str(script), *paths, "--batch", str(batch), "--precision",
                                   precision, "--json", str(Path(tmp) / "out.json")], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]}
        return json.loads((Path(tmp) / "out.json").read_text())


# ---- the run --------------------------------------------------------------------------------------

def run(args) -> dict:
    device = CpuStandIn() if args.smoke else CudaDevice()
    previous, cuda_backend.BACKEND.device = cuda_backend.BACKEND.device, device  # what `--backend cuda` uses
    try:
        return _measure(args, device)
    finally:
        cuda_backend.BACKEND.device = previous


def _measure(args, device) -> dict:
    models = [SMOKE_MODEL] if args.smoke else args.models
    batches = list(SMOKE_BATCHES) if args.smoke else args.batches
    budgets = {min(batches): 1.1} if args.smoke else {b: s for b, s in BUDGETS.items() if b in batches}
    settings = Settings(runs=args.runs, warmup=max(args.runs // 5, 1), precision=args.precision)
    deadline = time.monotonic() + args.time_limit
    report = {"machine": {**machine_info(precision=args.precision, runs=args.runs, batches=batches),
                          **device.describe(), "driver": driver_version(),
                          "timing": ("CPU stand-in: float32 eager calls, perf_counter" if args.smoke else
                                     f"{args.precision}, channels_last, cuDNN autotuned, samples of many CUDA-graph replays "
                                   f"between CUDA events after a warm-up until settled")},
              "equal_macs": [], "budgets": [], "skipped": []}
    for reference in models:
        if time.monotonic() > deadline:
            report["skipped"].append(f"{reference}: equal-MACs rows (time limit)")
            continue
        report["equal_macs"] += equal_macs_rows(reference, batches, settings, device)
    for reference in models:
        for batch, speedup in budgets.items():
            if time.monotonic() > deadline:
                report["skipped"].append(f"{reference}: --speedup {speedup} at batch {batch} (time limit)")
                continue
            report["budgets"].append(budget_row(reference, batch, speedup, settings, device))
    return report


def markdown(report: dict) -> str:
    machine = report["machine"]
    names = ("prunefx", "torch-pruning", "torch-pruning r8")

    def cell(entry):
        if not entry:
            return "-"
        if "error" in entry:
            return "failed"
        return f"{entry['speedup']:.2f}x ({entry['macs_kept']:.2f} MACs)"

    equal = markdown_table(["model", "batch", "dense ms", *names],
                           [[r["model"], r["batch"], f"{r.get('dense_ms', float('nan')):.3f}",
                             *[cell(r.get(n)) for n in names]] for r in report["equal_macs"]])
    budgets = markdown_table(["model", "batch", "asked", "re-measured (fresh pair)", "own timer, own process",
                              "MACs kept", "within [0.95 S, 1.25 S]"],
                             [[r["model"], r["batch"], f"{r['speedup_asked']}x",
                               f"{r['remeasured']:.2f}x" if "remeasured" in r else r.get("refused", "-"),
                               _independent(r.get("independent")),
                               f"{r['macs_kept']:.2f}" if "macs_kept" in r else "-",
                               {True: "yes", False: "no"}.get(r.get("within"), "refused" if "refused" in r else "-")]
                              for r in report["budgets"]])
    skipped = "".join(f"\n- skipped: {line}" for line in report["skipped"])
    return (f"# GPU speed-ups at equal MACs and latency budgets\n\n{machine['gpu']}, driver {machine['driver']}, "
            f"torch {machine['torch']}, {machine['timing']}, random weights.\n\n## Equal MACs (speed-up over dense)\n\n{equal}\n\n"
            f"## prunefx --speedup on the cuda backend\n\n{budgets}\n{skipped}\n")


def _independent(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['speedup']:.2f}x" if "speedup" in entry else f"failed: {entry.get('error', '')}"


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--precision", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--runs", type=int, default=50, help="timed replays per search measurement (x4 confirmed)")
    parser.add_argument("--time-limit", type=float, default=480.0, help="seconds before the rest is skipped")
    parser.add_argument("--out", type=Path, help="folder for gpu_speedup.{json,md} (default benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="one small model on a CPU stand-in for the device")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_speedup: needs an NVIDIA GPU with CUDA (use --smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-speedup-smoke-")) if args.smoke else RESULTS)
    if args.smoke and out.resolve() == RESULTS.resolve():
        print("gpu_speedup: --smoke results are not published in benchmarks/results", file=sys.stderr)
        return 2
    report = run(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_speedup.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_speedup.md").write_text(markdown(report))
    print(f"wrote {out / 'gpu_speedup.json'} and {out / 'gpu_speedup.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
