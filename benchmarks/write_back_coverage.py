"""Write every model of tests/test_channel_removal.py and every structural case of
tests/test_structural_cases.py back into its own module after pruning to 0.5 of the MACs, and record
which are written back (and checked here again on a third input) and which are refused, with the reason.

    .venv/bin/python benchmarks/write_back_coverage.py [--models torchvision:resnet18,...] [--no-cases]

Models: remove_channels(macs=0.5, strict=False), default importance (l2) and rounding (8); structural
cases: round_to=1, as their own test prunes them. Times are wall clock on a shared, loaded machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from common import command_line, machine_info, machine_summary, markdown_table, publish_results

from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError, first_line
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels
from prunefx.write_back import to_module

TESTS = Path(__file__).resolve().parents[1] / "tests"


def load_test_module(name: str):
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_case(removal, reference: str):
    """(model, inputs) as tests/test_channel_removal.py builds them."""
    torch.manual_seed(0)
    size = removal.IMAGE_SIZES.get(reference, 64)
    inputs = (torch.randn(1, removal.IN_CHANNELS.get(reference, 3), size, size),)
    model = build_model(reference, image_size=size).module.eval()
    if reference in removal.DEPTHS:
        model.blocks = model.blocks[:removal.DEPTHS[reference]]
    with torch.no_grad():  # zero-initialised heads would make every output zero and the check vacuous
        for parameter in model.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.normal_(std=0.02)
    return model, inputs


def structural_case(cases, name: str):
    factory, make_inputs = cases.EXACT_CASES[name][:2] if name in cases.EXACT_CASES else cases.BLOCKED_CASES[name]
    torch.manual_seed(0)
    inputs = make_inputs()
    return factory().eval(), inputs if isinstance(inputs, tuple) else (inputs,)


def third_input_error(program, module, inputs) -> float:
    """The largest output difference on another random input, relative to the largest output magnitude."""
    generator = torch.Generator().manual_seed(2)
    other = tuple(torch.randn(x.shape, generator=generator) if x.is_floating_point() else x for x in inputs)
    with torch.no_grad():
        expected = [t for t in pytree.tree_leaves(program(*other)) if isinstance(t, torch.Tensor)]
        actual = [t for t in pytree.tree_leaves(module(*other)) if isinstance(t, torch.Tensor)]
    scale = max(t.abs().max().item() for t in expected) or 1.0
    return max((e - a).abs().max().item() for e, a in zip(expected, actual, strict=True)) / scale


def write_back_one(name: str, model, inputs, round_to: int) -> dict:
    row = {"model": name}
    try:
        program = capture(model, inputs, name=name).eval()
        remove_channels(program, config={"macs": 0.5, "round_to": round_to, "strict": False})
    except PrunefxError as error:
        return {**row, "status": "not pruned", "message": first_line(error)}
    pruned = time.perf_counter()
    try:
        module = to_module(program, model)
    except PrunefxError as error:
        return {**row, "status": "refused", "message": str(error), "seconds": round(time.perf_counter() - pruned, 1)}
    return {**row, "status": "written back", "third_input_error": third_input_error(program, module, inputs),
            "seconds": round(time.perf_counter() - pruned, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated references (default: all of test_channel_removal)")
    parser.add_argument("--no-cases", action="store_true", help="leave out the structural cases")
    args = parser.parse_args()
    removal = load_test_module("test_channel_removal")
    rows = []
    for reference in args.models.split(",") if args.models else removal.MODELS:
        rows.append(write_back_one(reference, *model_case(removal, reference), round_to=8))
        print(rows[-1], flush=True)
    if not args.no_cases:
        cases = load_test_module("test_structural_cases")
        for name in sorted(cases.EXACT_CASES) + sorted(cases.BLOCKED_CASES):
            rows.append(write_back_one(f"case:{name}", *structural_case(cases, name), round_to=1))
            print(rows[-1], flush=True)
    info = machine_info(threads=torch.get_num_threads())
    counts = {status: sum(r["status"] == status for r in rows) for status in ("written back", "refused", "not pruned")}
    table = markdown_table(["model", "status", "3rd-input error", "write-back s", "reason"],
                           [[r["model"], r["status"], f"{r['third_input_error']:.1e}" if "third_input_error" in r else "",
                             r.get("seconds", ""), r.get("message", "").replace("|", "/")] for r in rows])
    markdown = (f"# Write-back coverage (pruned to 0.5 of the MACs)\n\n{machine_summary(info)}; machine shared with "
                f"other work, times indicative only.\n\n`{command_line()}`\n\n"
                f"{counts['written back']} written back, {counts['refused']} refused, {counts['not pruned']} "
                f"not pruned (nothing prunable), of {len(rows)}.\n\n{table}\n")
    return publish_results("write_back_coverage", {"machine": info, "counts": counts, "rows": rows}, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
