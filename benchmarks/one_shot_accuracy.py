"""one_shot_accuracy: accuracy right after pruning, without fine-tuning or labels.

Fashion-MNIST models of the accuracy benchmark (the dense baselines it trains and caches in
build/fashion_mnist_accuracy/; trained here first when missing), pruned once to 0.5 and 0.33 of
their MACs, then measured on the 10,000 test images with no training at all:
- tp-l2: Torch-Pruning, MagnitudeImportance(p=2), uniform ratio (nothing else);
- magnitude: prunefx remove_channels, l2, global ranking, round_to 4;
- + recalibration: then recalibrate_batchnorm (exact statistics on the calibration images);
- + compensation: remove_channels with compensate (least-squares update of every layer that loses
  input channels, H = X^T X on the calibration images), then recalibrate_batchnorm;
- + second-order selection: the same with importance obs (channels scored by the layer-output error
  their removal leaves after compensation, one scale across groups, global ranking), its default
  elimination (`obs_steps` fast: the exact steps, stopped at each group's width floor);
- + second-order selection (exact): the same with `obs_steps` exact (every group eliminated to its last
  channel), so that one run shows both side by side.
Calibration: 512 training images (4 batches of 128), labels unused.

With --imagenet, also pretrained ImageNet MobileNetV2 (offline weights) at 0.7 and 0.5 of its MACs:
calibration on 8 augmented views (random resized crop, flip) of each of 10 of the 20 offline ImageNet
images, top-1 agreement with the dense model on the other 10 (a small sample: one image is 10 points).

    .venv/bin/python benchmarks/one_shot_accuracy.py [--models resnet20 ...] [--fractions 0.5 0.33]
        [--baseline-epochs [MODEL=]N ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torchvision
from common import (
    command_line,
    machine_info,
    machine_summary,
    markdown_table,
    per_model_option,
    write_results,
)
from fashion_mnist_accuracy import BATCH, baseline, torch_pruning
from torchvision.io import ImageReadMode, decode_image

from prunefx.assets import imagenet_sample_images, load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.data.splits import fashion_mnist_data, imagenet_train_transform
from prunefx.graph import capture, count
from prunefx.models import load_weights
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.training.engine import evaluate

NAME = "one_shot_accuracy"
MODELS = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")
SECOND_ORDER = {"+ second-order selection": "fast", "+ second-order selection (exact)": "exact"}  # -> obs_steps
VARIANTS = ("tp-l2", "magnitude", "+ recalibration", "+ compensation", *SECOND_ORDER)
CALIBRATION_BATCHES = 4


def prune(variant: str, model: str, dense, fraction: float, calibration, *, round_to: int = 4) -> tuple:
    if variant == "tp-l2":
        return torch_pruning(model, dense, fraction), {}
    program = dense.clone()
    config = {"macs": fraction, "importance": "l2", "ranking": "global", "round_to": round_to}
    if variant == "+ compensation" or variant in SECOND_ORDER:
        config.update(compensate=True, calibration=calibration)
    if variant in SECOND_ORDER:
        config.update(importance="obs", obs_steps=SECOND_ORDER[variant])
    stats = remove_channels(program, config=config).stats
    if variant != "magnitude":
        recalibrate_batchnorm(program, config={"data": calibration})
    return program, stats.get("compensation", {})


def run_model(model: str, data, args) -> tuple[dict, list[dict]]:
    dense, info = baseline(model, data, argparse.Namespace(baseline_epochs=args.baseline_epochs, seed=args.seed))
    calibration = [inputs for inputs, _ in zip((b[0] for b in data.train), range(CALIBRATION_BATCHES))]
    calibration = [(x,) for x in calibration]
    rows = []
    for fraction in args.fractions:
        for variant in VARIANTS:
            started = time.perf_counter()
            print(f"[{model}] {variant} at {fraction}", file=sys.stderr)
            program, compensation = prune(variant, model, dense, fraction, calibration)
            rows.append({"model": model, "fraction": fraction, "variant": variant,
                         "macs_kept": count(program).macs / count(dense).macs,
                         "test_accuracy": evaluate(program.eval(), data.test)["accuracy"],
                         "layers_compensated": len(compensation.get("compensated", [])),
                         "seconds": time.perf_counter() - started})
    return info, rows


IMAGENET_VIEWS = 8


def imagenet_calibration_views(paths, seed: int) -> list[tuple[torch.Tensor]]:
    """IMAGENET_VIEWS augmented views of every image, in batches of len(paths) (the captured batch)."""
    torch.manual_seed(seed)
    transform = imagenet_train_transform(224)
    images = [decode_image(str(path), mode=ImageReadMode.RGB) for path in paths]
    return [(torch.stack([transform(image) for image in images]).as_subclass(torch.Tensor),)
            for _ in range(IMAGENET_VIEWS)]


def imagenet_mobilenet_v2(args) -> dict:
    images, labels = load_imagenet_batch(224)
    paths = [path for path, _ in imagenet_sample_images()]
    calibration = imagenet_calibration_views(paths[0::2], args.seed)
    held_out, held_out_labels = images[1::2], labels[1::2]
    model = torchvision.models.mobilenet_v2(weights=None)
    load_weights(model, mobilenet_v2_weights_path())
    dense = capture(model.eval(), held_out, name="mobilenet_v2").eval()
    with torch.no_grad():
        dense_top1 = dense(held_out).argmax(1)
    rows = []
    for fraction in (0.7, 0.5):
        for variant in VARIANTS[1:]:  # Torch-Pruning's one-shot is on the Fashion-MNIST table
            print(f"[mobilenet_v2] {variant} at {fraction}", file=sys.stderr)
            program, _ = prune(variant, "mobilenet_v2", dense, fraction, calibration, round_to=8)
            with torch.no_grad():
                top1 = program.eval()(held_out).argmax(1)
            rows.append({"fraction": fraction, "variant": variant, "macs_kept": count(program).macs / count(dense).macs,
                         "agreement": float((top1 == dense_top1).float().mean()),
                         "top1": float((top1 == held_out_labels).float().mean())})
    return {"images": len(held_out), "calibration_images": IMAGENET_VIEWS * len(paths[0::2]),
            "dense_top1": float((dense_top1 == held_out_labels).float().mean()), "runs": rows}


def imagenet_markdown(result: dict) -> list[str]:
    lines = [f"## ImageNet MobileNetV2 (pretrained): {result['images']} held-out images, dense top-1 "
             f"{100 * result['dense_top1']:.0f} %\n",
             f"Calibration: {result['calibration_images']} augmented views of the other "
             f"{result['calibration_images'] // IMAGENET_VIEWS} images. A sample this small says whether "
             "predictions survive, not an ImageNet accuracy: one image is 10 points.\n"]
    rows = [[f"{r['fraction']:g}", r["variant"], f"{r['macs_kept']:.3f}", f"**{100 * r['agreement']:.0f}**",
             f"{100 * r['top1']:.0f}"] for r in result["runs"]]
    lines.append(markdown_table(["MACs target", "variant", "MACs kept", "top-1 agreement with dense %",
                                 "top-1 %"], rows))
    return lines


def markdown(report: dict) -> str:
    lines = ["# One-shot pruning on Fashion-MNIST: no fine-tuning, no labels\n",
             f"Produced by `{report['command']}`.\n", machine_summary(report["machine"]), "",
             "- Dense baselines: trained by benchmarks/fashion_mnist_accuracy.py (cached); accuracy on the 10,000 "
             "test images. Calibration: 512 training images, labels unused.",
             "- No fine-tuning and no labels in any row; one run per cell.\n"]
    for model, info in report["baselines"].items():
        lines.append(f"## {model}: dense {100 * info['test_accuracy']:.2f} %\n")
        rows = [[f"{r['fraction']:g}", r["variant"], f"{r['macs_kept']:.3f}", f"**{100 * r['test_accuracy']:.2f}**",
                 f"{100 * (r['test_accuracy'] - info['test_accuracy']):+.2f}"]
                for r in report["runs"] if r["model"] == model]
        lines.append(markdown_table(["MACs target", "variant", "MACs kept", "test %", "vs dense (points)"], rows))
        lines.append("")
    if report.get("imagenet"):
        lines += imagenet_markdown(report["imagenet"])
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.33])
    parser.add_argument("--baseline-epochs", nargs="+", default=["8"], metavar="[MODEL=]N",
                        help="dense training epochs: N for every model, or MODEL=N (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imagenet", action="store_true", help="also pretrained ImageNet MobileNetV2")
    args = parser.parse_args(argv)
    args.baseline_epochs = per_model_option(parser, args.baseline_epochs, MODELS, "--baseline-epochs")
    torch.set_num_threads(args.threads)
    data = fashion_mnist_data(BATCH, validation=5000, seed=args.seed)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "baselines": {}, "runs": []}
    for model in args.models:
        report["baselines"][model], rows = run_model(model, data, args)
        report["runs"] += rows
    if args.imagenet:
        report["imagenet"] = imagenet_mobilenet_v2(args)
    json_path, md_path = write_results(NAME, report, markdown(report))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
