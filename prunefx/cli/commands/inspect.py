"""prunefx inspect MODEL: parameters, MACs, node count and operator histogram."""

from __future__ import annotations

import json

from prunefx.graph import count, operator_histogram
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.program_metadata import normalisation_record
from prunefx.image_statistics import describe
from prunefx.loading import program_from_args


def summary(program) -> dict:
    cost = count(program)
    histogram = operator_histogram(program.module)
    combing = find_channel_groups(program.module)
    return {
        "name": program.name,
        "input_shapes": [list(x.shape) for x in program.example_inputs],
        "output_shapes": [list(s) for s in program.output_shapes],
        "params": cost.params,
        "macs": cost.macs,
        "nodes": len(program.graph.nodes),
        # the statistics its images are normalised with, where known (null: ImageNet's are used)
        "normalisation": None if program.normalisation is None else normalisation_record(program.normalisation),
        "operators": dict(histogram.most_common()),
        "channel_groups": [group.to_dict() for group in combing.groups],
        "blocked_groups": [blocked.to_dict() for blocked in combing.blocked],
    }


def operation_nodes(program) -> list[dict]:
    """Every operation node of the graph: its name, its operator and the module it was called in ("" at the top)."""
    rows = []
    for node in program.graph.nodes:
        if node.op == "call_function":
            stack = node.meta.get("nn_module_stack") or {}
            module = list(stack.values())[-1][0] if stack else ""
            rows.append({"name": node.name, "operator": str(node.target), "module": module})
    return rows


def run(args) -> int:
    program = program_from_args(args)
    info = summary(program)
    if args.nodes:
        info["operation_nodes"] = operation_nodes(program)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model      {info['name']}")
    print(f"inputs     {info['input_shapes']}")
    print(f"outputs    {info['output_shapes']}")
    print(f"params     {info['params']:,} ({info['params'] / 1e6:.2f} M)")
    print(f"MACs       {info['macs']:,} ({info['macs'] / 1e9:.3f} G)")
    print(f"nodes      {info['nodes']}")
    print(f"images     {_normalisation(info['normalisation'])}")
    print("operators:")
    for operator, times in info["operators"].items():
        print(f"  {times:6d}  {operator}")
    _print_groups(info)
    if args.nodes:
        print("operation nodes (name, operator, module):")
        for row in info["operation_nodes"]:
            print(f"  {row['name']}  {row['operator']}  {row['module'] or '(top level)'}")
    return 0


def _normalisation(known: dict | None) -> str:
    if known is None:
        return "normalised with ImageNet's statistics (the model names none)"
    return f"normalised with {describe((known['mean'], known['std']))} (the model's)"


def _print_groups(info: dict) -> None:
    groups = info["channel_groups"]
    print(f"channel groups: {len(groups)} ({sum(g['size'] for g in groups)} removable channels)")
    for group in groups:
        kind = "factor" if group["factor"] else "width"
        exact = "" if group["exact"] else ", inexact (normalised)"
        print(f"  #{group['id']:<4d} {group['size']:6d} channels  {kind}{exact}  {len(group['members'])} tensors, "
              f"e.g. {group['members'][0]}")
    for blocked in info["blocked_groups"]:
        print(f"  blocked: {blocked['size']} channels of {blocked['members'][0]} by {', '.join(blocked['operators'])}")
