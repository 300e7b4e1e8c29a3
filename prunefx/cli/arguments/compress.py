"""`prunefx compress`'s flags (the command: prunefx/cli/commands/compress.py): the model, the recipe and its
budget, the data set, and how the result is measured."""

from __future__ import annotations

from prunefx import options
from prunefx.cli import flags
from prunefx.compress_options import Options
from prunefx.data.format_names import FORMATS
from prunefx.recipe_names import shipped_recipes


def add_arguments(parser) -> None:
    parser.add_argument("model", help="torchvision:NAME, timm:NAME, prunefx:NAME, path/to/file.py:factory or a saved "
                                      ".pt2 (captured at --batch-size)")
    parser.add_argument("--weights", help="state dict (.pth/.pt) to load into the model")
    parser.add_argument("--recipe",
                        help=f"a shipped recipe ({', '.join(shipped_recipes())}) or a recipe .yaml file (default "
                             "with a budget: budget-kd)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--speedup", type=options.number(1.0, low_open=True), metavar="S",
                        help="the budget of the recipe's budget pass (choose_for_budget, prune_to_budget, "
                             "depth_to_budget): a speed-up measured on --backend at --batch")
    budget.add_argument("--latency-ms", type=options.number(0.0, low_open=True), metavar="T",
                        help="the same budget as a latency in ms at --batch")
    parser.add_argument("--data", required=True, help="fashion-mnist, imagenet-sample, fashion-mnist-seg[:SIZE], "
                        "fashion-mnist-det[:SIZE] (scenes for segmentation and detection), or a data set on "
                        "disk: an ImageFolder (train/<class>/, val/<class>/), COCO (annotations/instances_*.json), "
                        "a YOLO data.yaml or image + mask folders (images/train/, masks/train/)")
    parser.add_argument("--data-format", choices=FORMATS,
                        help="the layout of --data on disk (default: detected from the path)")
    parser.add_argument("--workers", type=options.non_negative,
                        help="processes decoding images from disk (default: one per core, at most 8; never "
                             "more than the cores, or than the open-file limit leaves room for: said when capped)")
    parser.add_argument("--palette", metavar="FILE",
                        help="colour masks: one 'R G B name' line per class (default: palette.txt beside the masks)")
    parser.add_argument("--seed", type=options.seed, default=0, metavar="N",
                        help="seed of the data: the held-out validation images, the training order and each "
                             "image's crop and flip (default 0); a recipe's passes keep their own `seed`")
    parser.add_argument("--image-size", type=options.count, metavar="S",
                        help="resize images on disk to S x S (default: ImageFolder 224, detection and "
                             "segmentation the first training image's size)")
    flags.add_output(parser, "the models and the report")
    add_measurement_arguments(parser)
    flags.add_device(parser, runs="the recipe's passes (calibration, importance, OBS, recovery training) and the test scores")
    flags.add_budget_backend(parser, note="; a budget, the stages and the report's final latency are timed there",
                             batch_from="--batch-size", subject="the latency")


def add_measurement_arguments(parser) -> None:
    """Batch, evaluation and latency options, shared with `prunefx demo`."""
    parser.add_argument("--batch-size", type=options.count, default=128, help="training batch size (default 128)")
    parser.add_argument("--validation", type=options.non_negative, default=5000,
                        help="Fashion-MNIST training images held out for validation (default 5000)")
    parser.add_argument("--eval-batches", type=options.count, metavar="N",
                        help="evaluate on the first N batches of test and validation only (default: all)")
    flags.add_normalisation(parser)
    flags.add_measurement(parser, runs=Options.runs)
    flags.add_opset(parser)
    parser.add_argument("--no-stage-report", dest="stage_reports", action="store_false",
                        help="skip the test score and latency (on --backend) measured after every pass of the recipe")
