"""dense_tasks_ondisk: the segmentation benchmark's dense training rerun through the on-disk mask folders, against
its published figures (benchmarks/results/dense_tasks.json), same seeds and settings.

The published figures were made while fashion-mnist-seg's canvases sat in memory; they are now written as mask
folders (prunefx/data/scene_data.py) and read back by the reader users' data takes (prunefx/data/masks.py,
DataLoader workers). A full rerun (three dense baselines of 3, 15 and 11 epochs, then twelve pruned runs) takes
hours on these 2 shared cores, so `benchmarks/dense_tasks.py` is started with the published command and this
script compares what it has written so far: the validation mIoU after each dense epoch
(build/dense_tasks/<run>/dense_progress.json, written as training goes) with the published trajectory, epoch by
epoch, and the data path the rerun read.

    .venv/bin/python benchmarks/dense_tasks.py --models lraspp_mobilenetv3 --train 4000 --batch 16 \
        --baseline-epochs 3 lraspp_mobilenetv3=15 --fractions 0.5 0.33 --results-name dense_tasks_ondisk_lraspp &
    .venv/bin/python benchmarks/dense_tasks_ondisk.py --models lraspp_mobilenetv3 --train 4000 --batch 16 \
        --baseline-epochs 3 lraspp_mobilenetv3=15

Results: benchmarks/results/dense_tasks_ondisk.{json,md}; the published dense_tasks.{json,md} are not touched.
"""

from __future__ import annotations

import json
import os
import sys

from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results
from dense_tasks import parse_args, run_folder

from prunefx.data.splits import load_data

NAME = "dense_tasks_ondisk"
NOISE_POINTS = 1.0  # what two runs of one setting differ by after an epoch: run-to-run float order, not data


def compare(model: str, args, published: dict) -> dict:
    progress_path = run_folder(model, args) / "dense_progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {"val_miou_by_epoch": []}
    reference = published["baselines"][model]["val_miou_by_epoch"]
    rows = [{"epoch": epoch + 1, "published": reference[epoch], "on_disk": value,
             "difference_points": 100 * (value - reference[epoch])}
            for epoch, value in enumerate(progress["val_miou_by_epoch"])]
    return {"model": model, "epochs_published": len(reference), "epochs_rerun": len(rows), "rows": rows,
            "seconds": progress.get("seconds"), "progress_file": str(progress_path)}


def markdown(report: dict) -> str:
    lines = ["# Segmentation dense training rerun through the on-disk mask folders, against the published figures", "",
             f"- Command: `{report['command']}`", f"- Machine: {machine_summary(report['machine'])}; load average "
             f"{report['machine']['load_average']}: **shared with seven other engineers' work, so the rerun is partial**",
             f"- Data path: {report['data_path']}", *([f"- Note: {report['note']}"] if report.get("note") else []), "",
             "Same seeds, settings and schedule as the published runs (benchmarks/results/dense_tasks.md); the rerun was "
             "stopped where the session's time ran out, so only the first dense epochs are compared. "
             f"Within noise: |difference| <= {NOISE_POINTS:g} point.", ""]
    for entry in report["models"]:
        lines += [f"## {entry['model']}: {entry['epochs_rerun']} of {entry['epochs_published']} dense epochs rerun", ""]
        if not entry["rows"]:
            lines += ["No epoch finished before the run was stopped.", ""]
            continue
        rows = [(r["epoch"], f"{100 * r['published']:.2f}", f"{100 * r['on_disk']:.2f}",
                 f"{r['difference_points']:+.2f}", "yes" if abs(r["difference_points"]) <= NOISE_POINTS else "**no**")
                for r in entry["rows"]]
        lines += [markdown_table(["dense epoch", "published val mIoU", "on-disk val mIoU", "difference (points)",
                                  "within noise"], rows), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    note = ""
    if "--note" in argv:  # what the reader must know about how the rerun was made; the rest are dense_tasks' options
        at = argv.index("--note")
        note, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    args = parse_args(argv)
    published = json.loads((RESULTS / "dense_tasks.json").read_text())
    data = load_data(f"fashion-mnist-seg:{args.size}", args.batch, train_canvases=args.train,
                     val_canvases=args.val, test_canvases=args.test, seed=args.seed)
    path = f"train {data.train!r}; validation {data.val!r}"
    info = machine_info()
    info["load_average"] = [round(v, 1) for v in os.getloadavg()]
    report = {"command": command_line(), "machine": info, "data_path": path, "note": note,
              "models": [compare(model, args, published) for model in args.models]}
    return publish_results(NAME, report, markdown(report))


if __name__ == "__main__":
    sys.exit(main())
