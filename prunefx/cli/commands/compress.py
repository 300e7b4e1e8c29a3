"""prunefx compress MODEL --recipe RECIPE --data DATA -o DIR: prune and recover with a recipe, then measure.

The model is captured at the training batch size for the data's images; the recipe's passes run with
the training data, the validation data and the dense model (as teacher) given to the passes that need
them; the result is cut to batch 1, exported to ONNX and timed against the dense model on ONNX Runtime.
DIR gets model.pt2 (batch 1), model_train.pt2 (training batch), model.onnx, report.json, report.md and
accuracy_latency.png (accuracy against measured latency of every variant).
--device (auto: cuda when torch sees a GPU, else cpu) is where the recipe's passes compute: calibration,
importance, the OBS math, recovery training; the result is back on the CPU before it is measured and written.
The flow lives in prunefx/compression.py, shared with `prunefx demo`.
"""

from __future__ import annotations

from pathlib import Path

from prunefx.cli import options as cli_options
from prunefx.compress_inputs import load_model_and_data
from prunefx.compression import Options, compress, require_one_process
from prunefx.device import resolve_device
from prunefx.graph.errors import PrunefxError, printable
from prunefx.image_statistics import given_statistics
from prunefx.named_recipes import load_named_recipe, with_budget
from prunefx.output_paths import check_output_folder, check_writable_folder, within
from prunefx.reports.budget import BUDGET_CHART_FILE
from prunefx.reports.compression import console_summary

DEFAULT_BUDGET_RECIPE = "budget-kd"


def options_from(args) -> Options:
    return Options(threads=args.threads, runs=args.runs, eval_batches=args.eval_batches, opset=args.opset,
                   stage_reports=args.stage_reports, backend=args.backend, precision=args.precision,
                   trtexec=args.trtexec, batch=args.batch, compile=args.compile, device=str(resolve_device(args.device)))


def _check_checkpoint_folders(recipe, output: Path) -> None:
    """Each pass's checkpoint_dir, checked before any training: one the run cannot write would fail only when its
    training starts, after the passes before it; one inside -o would be refused on the rerun that resumes it (the
    folder holds files the run did not publish), and replaced with the folder once published."""
    for step in recipe.pipeline.steps:
        config = step.config if isinstance(step.config, dict) else vars(step.config)
        folder = config.get("checkpoint_dir")
        if folder is None:
            continue
        if within(folder, output):
            raise PrunefxError(f"{step.name}'s checkpoint_dir {printable(str(folder))} is inside the output "
                               f"folder {printable(str(output))}, which a run replaces whole: put it outside")
        try:
            check_writable_folder(folder)
        except PrunefxError as error:
            raise PrunefxError(f"{step.name}'s checkpoint_dir: {error}") from None


def run(args) -> int:
    budgeted = args.speedup is not None or args.latency_ms is not None
    require_one_process()
    resolve_device(args.device)  # a GPU that is missing is refused before anything loads
    if args.recipe is None and not budgeted:
        raise PrunefxError("give --recipe (or a budget, --speedup S or --latency-ms T, for the budget-kd recipe)")
    recipe = load_named_recipe(args.recipe or DEFAULT_BUDGET_RECIPE)  # a bad recipe fails before the data loads
    if budgeted:
        recipe = with_budget(recipe, speedup=args.speedup, latency_ms=args.latency_ms)
    # the stages and the report's final latency are timed on --backend: with or without a budget pass
    cli_options.check_budget_backend(args, budgeted=False, measures=True)
    output = check_output_folder(args.output)
    _check_checkpoint_folders(recipe, output)
    files = {"data_format": args.data_format, "num_workers": args.workers, "image_size": args.image_size,
             "palette": args.palette}
    dense, splits = load_model_and_data(args.model, args.data, batch_size=args.batch_size, weights=args.weights,
                                        normalisation=given_statistics(args, args.data),
                                        validation=args.validation, files=files, seed=args.seed)
    report = compress(dense, recipe, splits, output, data=args.data, options=options_from(args))
    print(console_summary(report))
    print(f"wrote {written(output)}")
    return 0


def written(output) -> str:
    """The files compress wrote into `output`, in the order they matter (the budget's chart only where one ran)."""
    names = ["model.pt2", "model_train.pt2", "model.onnx", "report.json", "report.md", "accuracy_latency.png",
             BUDGET_CHART_FILE]
    paths = [str(output / name) for name in names if (output / name).is_file()]
    return ", ".join(paths[:-1]) + f" and {paths[-1]}" if len(paths) > 1 else "".join(paths)
