"""`prunefx demo`'s flags (the command: prunefx/cli/commands/demo.py): the pruning demo's settings, the
--imagenet demo, and how both are measured."""

from __future__ import annotations

from prunefx import options
from prunefx.cli import flags

# The pruning demo's own settings, and their defaults: the --imagenet demo prunes nothing and refuses them.
PRUNING_ONLY = {"macs": 0.4, "calibration_images": 256, "kd_steps": 60, "eval_images": 2048, "batch_size": 128}


def add_arguments(parser) -> None:
    parser.add_argument("--imagenet", action="store_true",
                        help="the pretrained ImageNet MobileNetV2 demo: fold batch norm, export, benchmark")
    parser.add_argument("-o", "--output", default="out/demo", help="folder for models and reports (default out/demo)")
    parser.add_argument("--macs", type=options.fraction, default=PRUNING_ONLY["macs"],
                        help="fraction of the dense model's MACs to keep (default 0.4)")
    parser.add_argument("--calibration-images", type=options.calibration_images,
                        default=PRUNING_ONLY["calibration_images"],
                        help="Fashion-MNIST training images that choose the channels, compensate the weights and "
                             "recalibrate the batch norms, in whole batches of --batch-size (default 256)")
    parser.add_argument("--kd-steps", type=options.count, default=PRUNING_ONLY["kd_steps"],
                        help="distillation steps after the one-shot pruning (default 60)")
    parser.add_argument("--eval-images", type=options.count, default=PRUNING_ONLY["eval_images"],
                        help="test images the accuracy is measured on, in whole batches of --batch-size (default "
                             "2048; 10000: all)")
    parser.add_argument("--batch-size", type=options.count, default=PRUNING_ONLY["batch_size"],
                        help="training batch size (default 128)")
    flags.add_measurement(parser, runs=200, what="the latencies")
    # One thread: a 28x28 ResNet-20 runs in well under a millisecond, where a second thread adds
    # synchronisation rather than speed, and pruning's speed-up with it.
    parser.set_defaults(threads=1)
    threads = next(action for action in parser._actions if action.dest == "threads")
    threads.help = threads.help.replace("(default 2)", "(default 1)")
    flags.add_opset(parser)
