"""The summary tables of the benchmark pages, made from benchmarks/results/NAME.json while the docs build.

Where a benchmark script has a `markdown(report)` of its own, docs_results uses it; these renderers are for
the results files whose script has none, or whose renderer needs more than the file holds (an `info` kept
out of the file, a setting older files lack). Each reads only the file and raises KeyError/TypeError on a
shape it does not know, so that docs_results falls back to its generic tables rather than show a wrong one.
"""

from __future__ import annotations

from collections.abc import Callable


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)])


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# int8_latency's variant keys, as the int8 page names them.
INT8_VARIANTS = {"int8": "prunefx int8", "ort u8": "ort quantize_static u8 (default)",
                 "ort s8": "ort quantize_static s8", "modelopt": "ModelOpt ONNX PTQ (int8, CPU)",
                 "pruned fp32": "pruned 0.5 fp32", "pruned int8": "pruned 0.5 + prunefx int8",
                 "pruned int8 qat": "pruned 0.5 + prunefx int8 QAT", "fp32": "fp32"}


def _variants(models: dict) -> list[str]:
    names: list[str] = []
    for result in models.values():
        names += [name for name in result["variants"] if name not in names]
    return names


def _int8_speedups(models: dict) -> str:
    """Speed-up over FP32 per variant and model, the FP32 medians, and how far the gains multiply."""
    rows = [["FP32 median ms", *(f"{m['variants']['fp32']['median_ms']:.2f}" for m in models.values())]]
    for variant in _variants(models):
        if variant != "fp32":
            rows.append([INT8_VARIANTS.get(variant, variant),
                         *(_x(m["variants"].get(variant, {}).get("speedup_vs_fp32")) for m in models.values())])
    rows.append(["gains multiply: pruned int8 / (pruned x int8)",
                 *(f"{m['gains_multiply']['ratio']:.2f}" for m in models.values())])
    return _table(["variant", *models], rows)


def _int8_accuracy(models: dict) -> str:
    """Fashion-MNIST test top-1 % per variant and model, the change against FP32 in brackets."""
    rows = []
    for variant in _variants(models):
        cells = []
        for result in models.values():
            accuracy, fp32 = result["variants"].get(variant, {}).get("accuracy"), result["variants"]["fp32"]["accuracy"]
            cells.append("-" if accuracy is None else f"{100 * accuracy:.2f} ({100 * (accuracy - fp32):+.2f})")
        rows.append([INT8_VARIANTS.get(variant, variant), *cells])
    rows.append(["prunefx int8 speed-up / quantize_static u8's",
                 *(f"{_x(m['variants']['int8']['speedup_vs_fp32'])} / {_x(m['variants']['ort u8']['speedup_vs_fp32'])}"
                   for m in models.values())])
    return _table(["variant", *(f"{name} ({m['test_images']} test images)" for name, m in models.items())], rows)


def int8_latency(data: dict) -> str:
    parts = [f"**Speed-up over FP32, 224x224, batch 1** (`{data['command']}`)", "", _int8_speedups(data["models"])]
    long_run = data.get("long_run_224")
    if long_run:
        parts += ["", f"**The longer run** (`{long_run['command']}`)", "", _int8_speedups(long_run["models"])]
    if data.get("fashion_mnist"):
        command = data.get("fashion_mnist_run", {}).get("command", data["command"])
        parts += ["", f"**Fashion-MNIST test top-1 %** (`{command}`)", "", _int8_accuracy(data["fashion_mnist"])]
    return "\n".join(parts)


def int8_head_to_head(data: dict) -> str:
    rows = []
    for model, by_threads in data["models"].items():
        for threads, row in by_threads.items():
            low, high = row["interval_95"]
            verdict = "prunefx faster" if low > 1 else "prunefx slower" if high < 1 else "cannot be told apart"
            ratio = row.get("ratio", row.get("ratio_median"))  # a file from before the runtime's statistic
            rows.append([model, threads, f"{row['prunefx_ms_median']:.2f}", f"{row['ort_u8_ms_median']:.2f}",
                         f"{ratio:.3f}", f"{low:.3f} - {high:.3f}",
                         f"{row['rounds_prunefx_faster']} of {row['rounds']}", verdict])
    pooled = all("confidence" in row for by_threads in data["models"].values() for row in by_threads.values())
    interval = ("95 % Student's t interval over the rounds (the runtime's statistic)" if pooled
                else "95 % bootstrap interval of the median ratio")
    return (f"`{data['command']}`: ratio = quantize_static's median / prunefx's (above 1: prunefx faster), "
            f"{interval}.\n\n"
            + _table(["model", "threads", "prunefx ms", "quantize_static u8 ms", "ratio", "95 % interval",
                      "rounds prunefx faster", "verdict"], rows))


def int8_methods(data: dict) -> str:
    models = data["models"]
    variants: list[str] = []
    for scores in models.values():
        variants += [name for name in scores if name not in variants]
    rows = [[variant, *(f"{100 * scores[variant]:.2f}" for scores in models.values())] for variant in variants]
    return (f"`{data['command']}`: Fashion-MNIST test top-1 % ({data['test_images']} test images), dense PTQ.\n\n"
            + _table(["calibration", *models], rows))


def _speedup(run: dict, key: str) -> float | None:
    """A run's search or independent speed-up, in either shape latency_budget.py has written."""
    value = run.get(key)
    return value.get("speedup") if isinstance(value, dict) else run.get(f"{key}_speedup")


def _budget_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for run in runs:
        budget = run["budget"]
        if "refused" in run:
            verdict = "refused: " + " ".join(run["refused"].split())
        else:
            verdict = "yes" if run["within_target"] else f"**no** ({_speedup(run, 'independent') / budget:.2f} S)"
        macs = run.get("macs_kept")
        rows.append([run["model"], f"{budget:g}x", run.get("route", "width"), "-" if macs is None else f"{macs:.3f}",
                     _x(_speedup(run, "search")), _x(_speedup(run, "independent")), verdict,
                     f"{run['search_seconds']:.0f} s"])
    return rows


def latency_budget(data: dict) -> str:
    header = ["model", "S", "route", "MACs kept", "search", "independent", "within [0.95 S, 1.25 S]", "search time"]
    parts = [f"**`{data['command']}`**", "", _table(header, _budget_rows(data["runs"]))]
    previous = data.get("previous_run")
    if previous:
        parts += ["", f"**The run before** (`{previous['command']}`)", "", _table(header, _budget_rows(previous["runs"]))]
    return "\n".join(parts)


def prune_defaults(data: dict) -> str:
    dense = data["dense_test_accuracy"]
    rows = [["`" + " ".join(run["flags"]) + "`" if run["flags"] else "(none)",
             run["importance"] + (" + compensation" if run["compensated"] else "")
             + (" + BN recalibration" if run["recalibrated"] else ""),
             f"{run['macs_kept']:.3f}", f"{100 * run['test_accuracy']:.2f}", f"{100 * (run['test_accuracy'] - dense):+.2f}"]
            for run in data["runs"]]
    return (f"`{data['command']}`: dense {100 * dense:.2f} % after {data['epochs']} epochs; no fine-tuning.\n\n"
            + _table(["flags", "what runs", "MACs kept", "test %", "vs dense"], rows))


def _tp_cell(variant: dict, reduction: float) -> str:
    """Torch-Pruning's speed-up, with its MACs reduction where it is off prunefx's by more than 5 %."""
    speedup = _x(variant["latency"]["speedup"])
    off = abs(variant["macs_reduction"] / reduction - 1) > 0.05
    return f"{speedup} (at {variant['macs_reduction']:.2f}x fewer MACs)" if off else speedup


def prune_latency(data: dict) -> str:
    rows = []
    for entry in data["models"]:
        variants = entry["variants"]
        best = variants["prunefx-global"]
        reduction = best["macs_reduction"]
        rows.append([entry["model"].split(":")[-1], f"{reduction:.2f}x", f"**{_x(best['latency']['speedup'])}**",
                     f"{best['speedup_per_macs_reduction']:.2f}",
                     _x(variants["prunefx-local"]["latency"]["speedup"]) if "prunefx-local" in variants else "-",
                     _tp_cell(variants["tp-default"], reduction), _tp_cell(variants["tp-round16"], reduction),
                     _x(variants["dense-copy"]["latency"]["speedup"]) if "dense-copy" in variants else "-"])
    target = data["settings"]["target_speedup_per_macs_reduction"]
    return (f"Global ranking (`prunefx-global`) against Torch-Pruning; target: speed-up at least {target} of the MACs "
            "reduction. The control times the dense model against a second export of itself.\n\n"
            + _table(["model", "MACs reduction", "prunefx speed-up", "speed-up / MACs reduction", "prunefx local",
                      "Torch-Pruning", "Torch-Pruning, round_to=16", "control"], rows))


RENDERERS: dict[str, Callable[[dict], str]] = {
    "int8_latency": int8_latency, "int8_head_to_head": int8_head_to_head, "int8_methods": int8_methods,
    "latency_budget": latency_budget, "prune_defaults": prune_defaults, "prune_latency": prune_latency}


def renderer_of(name: str) -> Callable[[dict], str] | None:
    """The renderer for NAME.json: by its name, or by the longest prefix (a variant NAME_SUFFIX)."""
    for prefix in sorted(RENDERERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "_"):
            return RENDERERS[prefix]
    return None
