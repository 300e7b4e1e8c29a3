"""depth_vs_channel's block choice, crossed: each code's `linearize_blocks` on each code's calibration batches.

At depth 6 ranked by damage per MAC, b3cdfb1's code and today's picked different blocks on one dense
MobileNetV2-small (benchmarks/results/headline_reproduction.md). Both read 4 calibration batches from the
Fashion-MNIST training loader, and the loader's augmentation path changed in between. This script holds the
batches fixed: `save` writes the batches the running code's loader draws (data seed `--seed`), then `choose`
runs the running code's `linearize_blocks` on every saved file, for each depth and ranking depth_vs_channel
uses. Run under an older commit through scripts/at_commit, it gives that code's side of the cross. The dense
model is depth_vs_channel's cached baseline (build/fashion_mnist_accuracy/): both codes load the same file.

    .venv/bin/python scripts/depth_choice_crossed.py save BATCHES.pt [--seed S]
    .venv/bin/python scripts/depth_choice_crossed.py choose CODE OUT.json BATCHES.pt...
    .venv/bin/python scripts/depth_choice_crossed.py table OUT.json...   # -> reproduced/depth_vs_channel_crossed

If the passes did not change, both codes pick the same blocks on every batch file, whichever loader drew it.
Only APIs both b3cdfb1 and today's code have are used (Fashion-MNIST's loader moved from prunefx.data to
prunefx.data.splits in between).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DENSE = REPO / "build" / "fashion_mnist_accuracy" / "mobilenetv2_small" / "dense.pt2"
BATCH = 128  # fashion_mnist_accuracy's batch size, the same at both commits
DEPTHS, RANKS = (2, 4, 6), ("damage", "damage_per_mac")  # depth_vs_channel's published command


def save(path: Path, seed: int) -> None:
    try:
        from prunefx.data.splits import fashion_mnist_data
    except ImportError:  # b3cdfb1: one module
        from prunefx.data import fashion_mnist_data
    data = fashion_mnist_data(BATCH, validation=5000, seed=seed)
    torch.save([batch for batch, _ in zip(data.train, range(4))], path)  # as depth_vs_channel reads them


def choose(code: str, out: Path, files: list[Path]) -> None:
    from prunefx.graph import Program
    from prunefx.passes.linearize_blocks import linearize_blocks

    dense = Program.load(DENSE).eval()
    rows = []
    for file in files:
        calibration = torch.load(file, weights_only=True)
        for rank in RANKS:
            for count in DEPTHS:
                result = linearize_blocks(dense.clone(), config={"count": count, "mode": "progressive", "ramp": 0.5,
                                                                 "rank": rank, "calibration": calibration,
                                                                 "progress": False})
                rows.append({"code": code, "batches": file.stem, "count": count, "rank": rank,
                             "threads": torch.get_num_threads(), "blocks": result.stats["chosen"]})
                print(rows[-1], file=sys.stderr)
    out.write_text(json.dumps(rows, indent=1))


def agreement(rows: list[dict]) -> tuple[int, int]:
    """(cases where every code picked the same blocks, cases run by more than one code); a case is one batch file,
    depth and ranking."""
    picks: dict[tuple, set[tuple[str, ...]]] = {}
    codes: dict[tuple, set[str]] = {}
    for r in rows:
        case = (r["batches"], r["count"], r["rank"])
        picks.setdefault(case, set()).add(tuple(sorted(r["blocks"])))
        codes.setdefault(case, set()).add(r["code"])
    crossed = [case for case in picks if len(codes[case]) > 1]
    return sum(len(picks[case]) == 1 for case in crossed), len(crossed)


def table(files: list[Path]) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import command_line, machine_info, markdown_table, write_results

    rows = [row for file in files for row in json.loads(file.read_text())]
    same, cases = agreement(rows)
    report = {"command": command_line(), "machine": machine_info(threads=sorted({r["threads"] for r in rows})),
              "dense": str(DENSE.relative_to(REPO)), "rows": rows, "same_blocks": same, "cases": cases}
    rows = sorted(rows, key=lambda r: (r["rank"], r["count"], r["batches"], r["code"]))
    text = "\n".join([
        "# linearize_blocks: each code on each code's calibration batches\n", f"`{report['command']}`\n",
        "The dense model: depth_vs_channel's cached MobileNetV2-small; the batches: the first 4 training batches "
        "as each code's loader draws them (`batches-CODE-seed-S`: data seed S).\n",
        f"The codes picked the same blocks in {same} of {cases} cases (a batch file, a depth and a ranking).\n",
        markdown_table(["rank", "depth", "calibration batches", "code", "blocks chosen"],
                       [[r["rank"], r["count"], r["batches"], r["code"], ", ".join(r["blocks"])] for r in rows]), ""])
    write_results("depth_vs_channel_crossed", report, text, folder=REPO / "benchmarks" / "results" / "reproduced")
    print(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    saver = commands.add_parser("save")
    saver.add_argument("path", type=Path)
    saver.add_argument("--seed", type=int, default=0)
    chooser = commands.add_parser("choose")
    chooser.add_argument("code")
    chooser.add_argument("out", type=Path)
    chooser.add_argument("files", nargs="+", type=Path)
    commands.add_parser("table").add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "save":
        save(args.path, args.seed)
    elif args.command == "choose":
        choose(args.code, args.out, args.files)
    else:
        table(args.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
