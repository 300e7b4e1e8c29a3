"""dense_tasks_ondisk: the segmentation benchmark's dense training rerun through the on-disk mask folders, against
its published figures (benchmarks/results/dense_tasks.json), same seeds and settings.

The published figures were made while fashion-mnist-seg's canvases sat in memory; they are now written as mask
folders (prunefx/data/scene_data.py) and read back by the reader users' data takes (prunefx/data/masks.py,
DataLoader workers). A full rerun (three dense baselines of 3, 15 and 11 epochs, then twelve pruned runs) takes
hours on these 2 shared cores, so `benchmarks/dense_tasks.py` is started with the published command (its own
`--cache` folder, so that it never resumes another run's checkpoint) and this script compares what each rerun has
written so far: the validation mIoU after each dense epoch (<cache>/<run>/dense_progress.json, written as training
goes) and, once its dense training is over, the test mIoU, with the published figures, and the data path read.

    .venv/bin/python benchmarks/dense_tasks.py --models lraspp_mobilenetv3 --train 4000 --batch 16 \
        --baseline-epochs 3 lraspp_mobilenetv3=15 --fractions 0.5 0.33 --results-name dense_tasks_ondisk_lraspp \
        --cache build/dense_tasks_ondisk &
    .venv/bin/python benchmarks/dense_tasks_ondisk.py --models lraspp_mobilenetv3 --train 4000 --batch 16 \
        --baseline-epochs 3 lraspp_mobilenetv3=15 --rerun "LABEL" build/dense_tasks_ondisk [--rerun ...] [--note TEXT]
        [--results-name NAME]

Results: benchmarks/results/dense_tasks_ondisk.{json,md} (or NAME.{json,md}); the published dense_tasks.{json,md}
are not touched.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results
from dense_tasks import parse_args, run_folder

from prunefx.data.splits import load_data

NAME = "dense_tasks_ondisk"
NOISE_POINTS = 1.0  # what two runs of one setting differ by after an epoch: run-to-run float order, not data


def compare(model: str, args, published: dict, label: str) -> dict:
    folder = run_folder(model, args)
    progress_path, dense_path = folder / "dense_progress.json", folder / "dense.json"
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {"val_miou_by_epoch": []}
    # per-epoch validation figures were published for the models trained after they were recorded (not U-Net)
    reference = published["baselines"][model].get("val_miou_by_epoch", [])
    rows = [{"epoch": epoch + 1, "published": reference[epoch], "on_disk": value,
             "difference_points": 100 * (value - reference[epoch])}
            for epoch, value in enumerate(progress["val_miou_by_epoch"]) if epoch < len(reference)]
    finished = json.loads(dense_path.read_text()) if dense_path.is_file() else {}
    return {"model": model, "rerun": label, "epochs_published": published["baselines"][model]["epochs"],
            # a run made before per-epoch progress was recorded has only its finished dense.json
            "epochs_rerun": len(progress["val_miou_by_epoch"]) or finished.get("epochs", 0), "epochs_compared": len(rows),
            "rows": rows, "seconds": progress.get("seconds"), "progress_file": str(progress_path),
            "test_miou": finished.get("test_miou"), "published_test_miou": published["baselines"][model]["test_miou"]}


def _model_lines(entry: dict) -> list[str]:
    title = f"## {entry['model']}" + (f", {entry['rerun']}" if entry.get("rerun") else "")
    lines = [f"{title}: {entry['epochs_rerun']} of {entry['epochs_published']} dense epochs rerun", ""]
    if not entry["epochs_rerun"]:
        return lines + ["No epoch finished before the run was stopped.", ""]
    if entry["rows"]:
        rows = [(r["epoch"], f"{100 * r['published']:.2f}", f"{100 * r['on_disk']:.2f}",
                 f"{r['difference_points']:+.2f}", "yes" if abs(r["difference_points"]) <= NOISE_POINTS else "**no**",
                 "yes" if r["on_disk"] == r["published"] else "no")
                for r in entry["rows"]]
        lines += [markdown_table(["dense epoch", "published val mIoU", "on-disk val mIoU", "difference (points)",
                                  "within noise", "bit for bit"], rows), ""]
    else:
        lines += ["Its validation mIoU per epoch was not published (recorded only for runs trained after it): the "
                  "dense test mIoU below is the comparison.", ""]
    if entry.get("test_miou") is not None:
        difference = 100 * (entry["test_miou"] - entry["published_test_miou"])
        lines += [f"Dense test mIoU after all {entry['epochs_published']} epochs: {100 * entry['test_miou']:.2f} "
                  f"against the published {100 * entry['published_test_miou']:.2f} ({difference:+.2f} points, "
                  f"{'within' if abs(difference) <= NOISE_POINTS else '**outside**'} the {NOISE_POINTS:g}-point bound).",
                  ""]
    return lines


def markdown(report: dict) -> str:
    lines = ["# Segmentation dense training rerun through the on-disk mask folders, against the published figures", "",
             f"- Command: `{report['command']}`", f"- Machine: {machine_summary(report['machine'])}; load average "
             f"{report['machine']['load_average']}: **shared with other engineers' work, so reruns may be partial**",
             f"- Data path: {report['data_path']}", *([f"- Note: {report['note']}"] if report.get("note") else []), "",
             "Same seeds, settings and schedule as the published runs (benchmarks/results/dense_tasks.md); a rerun "
             "stopped where the session's time ran out compares its first dense epochs only. "
             f"Within noise: |difference| <= {NOISE_POINTS:g} point.", ""]
    for entry in report["models"]:
        lines += _model_lines(entry)
    return "\n".join(lines)


def _take(argv: list[str], flag: str, values: int) -> tuple[list[list[str]], list[str]]:
    """Every `flag V1 .. Vn` taken out of `argv` (the rest are dense_tasks' options)."""
    taken = []
    while flag in argv:
        at = argv.index(flag)
        taken.append(argv[at + 1:at + 1 + values])
        argv = argv[:at] + argv[at + 1 + values:]
    return taken, argv


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    notes, argv = _take(argv, "--note", 1)  # what the reader must know about how the reruns were made
    reruns, argv = _take(argv, "--rerun", 2)  # LABEL CACHE_FOLDER of each rerun (default: dense_tasks' --cache)
    names, argv = _take(argv, "--results-name", 1)  # another file, so that a later rerun keeps an earlier one's
    args = parse_args(argv)
    published = json.loads((RESULTS / "dense_tasks.json").read_text())
    data = load_data(f"fashion-mnist-seg:{args.size}", args.batch, train_canvases=args.train,
                     val_canvases=args.val, test_canvases=args.test, seed=args.seed)
    path = f"train {data.train!r}; validation {data.val!r}"
    info = machine_info()
    info["load_average"] = [round(v, 1) for v in os.getloadavg()]
    entries = []
    for label, cache in reruns or [["", str(args.cache)]]:
        args.cache = Path(cache)
        entries += [compare(model, args, published, label) for model in args.models]
    report = {"command": command_line(), "machine": info, "data_path": path, "note": " ".join(n[0] for n in notes),
              "models": entries}
    return publish_results(names[-1][0] if names else NAME, report, markdown(report))


if __name__ == "__main__":
    sys.exit(main())
