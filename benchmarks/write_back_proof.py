"""What the write-back's proof module by module (prunefx/interop/proof_by_module.py) catches, and what it costs.

    .venv/bin/python benchmarks/write_back_proof.py

Caught: a model pruned to 0.5 of the MACs and written back, then one attention's queries scaled by 0.87 (a
scale applied twice): its outputs' error against the pruned Program, that attention's error where its call
ends, and whether `verify_module` refuses it. Cost: `to_module` of a pruned model, once with the modules
compared one by one and once with none compared (`agreeing` made to return no module), one thread, random
weights, in this process, after one call of it left out as a warm-up.
"""

from __future__ import annotations

import time

import torch
from common import command_line, machine_info, machine_summary, markdown_table, publish_results

import prunefx.interop.write_back as write_back
from prunefx.graph import capture
from prunefx.interop.proof_by_module import module_ends, program_values, watched
from prunefx.interop.write_back import to_module
from prunefx.interop.write_back_proof import TOLERANCE, WriteBackError, verify_module
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels

CAUGHT = ("timm:pvt_v2_b0", "timm:vit_small_patch16_224")
COST = ("torchvision:resnet50", "timm:vit_base_patch16_224", "timm:coat_tiny")


def _pruned(reference: str):
    torch.manual_seed(0)
    model = build_model(reference).module.eval()
    program = capture(model, (torch.randn(1, 3, 224, 224),), name=reference).eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 8, "strict": False})
    return model, program


def _first_attention(module):
    """(path, query weight rows) of the first attention holding its queries in `q` or in `qkv`'s first third."""
    for path, each in module.named_modules():
        if path.endswith("attn") and hasattr(each, "q"):
            return path, each.q.weight
        if path.endswith("attn") and hasattr(each, "qkv"):
            return path, each.qkv.weight[: each.qkv.weight.shape[0] // 3]
    raise LookupError("no attention")


def caught(reference: str) -> dict:
    model, program = _pruned(reference)
    module = to_module(program, model)
    path, queries = _first_attention(module)
    with torch.no_grad():
        queries.mul_(0.87)
        x = program.example_inputs
        expected, actual = program(*x), module(*x)
        outputs_error = ((expected - actual).abs().max() / expected.abs().max()).item()
        ends = module_ends(program, module, {path})
        _, values = program_values(program, x, ends)
        with watched(module, values, TOLERANCE) as differences:
            module(*x)
    try:
        verify_module(program, module, reference, "")
        verdict = "accepted"
    except WriteBackError as error:
        verdict = f"refused, naming '{error.module_path}'"
    return {"model": reference, "attention": path, "outputs_error": outputs_error,
            "attention_error": differences.errors.get(path, [None])[0], "proof": verdict}


def cost(reference: str) -> dict:
    model, program = _pruned(reference)
    seconds = {}
    to_module(program, model)  # a first call's warm-up is in neither figure
    compare = write_back.agreeing
    for label, agreeing in (("none compared", lambda *_: set()), ("compared", compare)):
        write_back.agreeing = agreeing
        try:
            start = time.perf_counter()
            to_module(program, model)
            seconds[label] = time.perf_counter() - start
        finally:
            write_back.agreeing = compare
    return {"model": reference, "seconds_none_compared": round(seconds["none compared"], 2),
            "seconds_compared": round(seconds["compared"], 2)}


def main() -> int:
    torch.set_num_threads(1)
    caught_rows = [caught(reference) for reference in CAUGHT]
    cost_rows = [cost(reference) for reference in COST]
    info = machine_info(threads=1)
    markdown = (
        f"# The write-back's proof module by module: what it catches, what it costs\n\n{machine_summary(info)}; "
        f"one thread, random weights, each model pruned to 0.5 of the MACs.\n\n`{command_line()}`\n\n"
        "## One attention's queries scaled by 0.87 after the write-back\n\n"
        + markdown_table(["model", "attention", "outputs' error", "its error where its call ends", "proof"],
                         [[r["model"], r["attention"], f"{r['outputs_error']:.1e}", "not compared" if r["attention_error"] is None else f"{r['attention_error']:.1e}",
                           r["proof"]] for r in caught_rows])
        + f"\n\nThe outputs' tolerance is {TOLERANCE:g}, relative.\n\n## Time of `to_module`\n\n"
        + markdown_table(["model", "s, no module compared", "s, modules compared"],
                         [[r["model"], r["seconds_none_compared"], r["seconds_compared"]] for r in cost_rows])
        + "\n\nOne measurement each, in one process (the second after the first): indicative.\n")
    return publish_results("write_back_proof", {"machine": info, "caught": caught_rows, "cost": cost_rows}, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
