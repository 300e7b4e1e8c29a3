"""Prune every model of the zoo test to 0.5 and 0.3 of its MACs and record what happened.

For each model and target: MACs and parameters kept, time to prune, whether the result verifies,
and the torch-vs-ONNX-Runtime parity of its ONNX file. The model list and the small input sizes are
those of tests/test_prune_zoo.py (which checks ONNX parity at 0.3 only, to keep CI short).

    .venv/bin/python benchmarks/prune_zoo.py [--models torchvision:resnet18,...] [--round-to 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from common import command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph import verify
from prunefx.graph.errors import first_line
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import check_parity, export_onnx

FRACTIONS = (0.5, 0.3)


def _zoo_module():
    path = Path(__file__).resolve().parents[1] / "tests" / "test_prune_zoo.py"
    spec = importlib.util.spec_from_file_location("test_prune_zoo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prune_one(zoo, reference: str, fraction: float, round_to: int) -> dict:
    row = {"model": reference, "target": fraction, "image_size": zoo.IMAGE_SIZES.get(reference, 64)}
    try:
        program = zoo.zoo_program(reference)
        started = time.perf_counter()
        result = remove_channels(program, config={"macs": fraction, "round_to": round_to})
        row["prune_s"] = time.perf_counter() - started
        stats = result.stats
        row.update(macs_kept=stats["macs_after"] / stats["macs_before"],
                   params_kept=stats["params_after"] / stats["params_before"],
                   predicted_exactly=stats["macs_predicted"] == stats["macs_after"],
                   groups=len(stats["groups"]), blocked_groups=len(stats["blocked"]))
        verify(result.program)
        with tempfile.TemporaryDirectory() as folder:
            exported = export_onnx(result.program, Path(folder) / "pruned.onnx")
            parity = check_parity(result.program, exported.path)
        row.update(exporter=exported.exporter, parity_relative=parity.relative,
                   outputs_constant=parity.outputs_constant, ok=not parity.outputs_constant)
        if parity.outputs_constant:
            row["error"] = "the outputs do not change with the input: parity compares nothing"
    except Exception as error:  # one model failing must not hide the others
        row.update(ok=False, error=first_line(error))
    return row


def main() -> None:
    zoo = _zoo_module()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated references (default: the whole zoo)")
    parser.add_argument("--round-to", type=int, default=8)
    args = parser.parse_args()
    models = args.models.split(",") if args.models else zoo.ZOO
    info = machine_info(round_to=args.round_to, fractions=list(FRACTIONS))
    rows = []
    for reference in models:
        for fraction in FRACTIONS:
            rows.append(prune_one(zoo, reference, fraction, args.round_to))
            print(rows[-1], flush=True)
    table = markdown_table(
        ["model", "input", "target", "MACs kept", "params kept", "prune s", "groups", "blocked", "ONNX parity", "ok"],
        [[r["model"], r["image_size"], r["target"], f"{r.get('macs_kept', float('nan')):.3f}",
          f"{r.get('params_kept', float('nan')):.3f}", f"{r.get('prune_s', float('nan')):.1f}",
          r.get("groups", "-"), r.get("blocked_groups", "-"), f"{r.get('parity_relative', float('nan')):.1e}",
          "yes" if r["ok"] else f"no: {r['error']}"] for r in rows])
    passed = sum(r["ok"] and abs(r["macs_kept"] / r["target"] - 1) <= 0.03 for r in rows)
    markdown = (f"# Pruning the model zoo to 0.5 and 0.3 of its MACs\n\nProduced by `{command_line()}` on "
                f"{info['date_utc']} UTC.\n\n- Machine: {machine_summary(info)}.\n- Random weights (redrawn where a model's "
                f"outputs would not change with its input, as tests/test_prune_zoo.py does), l2 importance, "
                f"global ranking, round_to={args.round_to}; parity is max abs error / max abs output, torch vs "
                f"ONNX Runtime.\n- {passed} of {len(rows)} runs verified, exported and met the target within 3 %.\n\n"
                f"{table}\n")
    write_results("prune_zoo", {"machine": info, "command": command_line(), "results": rows}, markdown)
    print(table)


if __name__ == "__main__":
    main()
