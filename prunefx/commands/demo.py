"""prunefx demo: the main job end to end, in a few minutes on a laptop-class CPU.

Default: train `prunefx:resnet20` on Fashion-MNIST for a short budget (plain cross-entropy through the
distill pass with kd_weight 0), then compress it with a shipped recipe to half the MACs (the flow of
`prunefx compress`, prunefx/compression.py) and print dense against compressed accuracy, MACs,
parameters and the ONNX Runtime speed-up measured side by side. OUTPUT/dense_train.pt2 keeps the trained
dense model, so `prunefx compress OUTPUT/dense_train.pt2 --data fashion-mnist --recipe ...` can try other
recipes on it.

`--imagenet`: the earlier demo on pretrained ImageNet MobileNetV2 (offline weights): inspect -> fold
batch norm (verified, exact) -> export to ONNX (checked, parity) -> top-1 on the 20 real ImageNet images
in torch and in ONNX Runtime -> latency, dense against folded, side by side.
"""

from __future__ import annotations

import time

import torch
import torchvision

from prunefx import options
from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.commands.compress import add_measurement_arguments, options_from
from prunefx.compression import compress, load_model_and_data, load_named_recipe
from prunefx.compression_report import console_summary
from prunefx.graph import capture, count
from prunefx.models import load_weights
from prunefx.output import check_output_folder, staged_file, staged_folder
from prunefx.passes import Pipeline, distill, fold_batchnorm
from prunefx.runtime import (
    OnnxRuntimeSession,
    check_parity,
    compare_latency,
    export_onnx,
    measure_latency,
    onnx_runner,
    torch_runner,
)

NAME = "demo"
HELP = ("train ResNet-20 on Fashion-MNIST briefly, compress it to half the MACs with a shipped recipe and print "
        "accuracy, MACs and the measured ONNX Runtime speed-up (--imagenet: fold batch norms of MobileNetV2)")
TAKES_MODEL = False
MODEL = "prunefx:resnet20"
DATA = "fashion-mnist"
DEFAULT_RECIPE = "cpd-macs0.5"


def add_arguments(parser) -> None:
    parser.add_argument("--imagenet", action="store_true",
                        help="the pretrained ImageNet MobileNetV2 demo: fold batch norm, export, benchmark")
    parser.add_argument("-o", "--output", default="out/demo", help="folder for models and reports (default out/demo)")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help=f"shipped recipe or .yaml file for the compression (default {DEFAULT_RECIPE})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=options.count, default=1, help="dense training epochs (default 1)")
    budget.add_argument("--steps", type=options.count, help="dense training steps instead of --epochs")
    add_measurement_arguments(parser)


def run(args) -> int:
    if args.imagenet:
        return _imagenet_demo(args)
    return _fashion_mnist_demo(args)


def _fashion_mnist_demo(args) -> int:
    recipe = load_named_recipe(args.recipe)
    output = check_output_folder(args.output)
    dense, splits = load_model_and_data(MODEL, DATA, batch_size=args.batch_size, validation=args.validation)
    budget = {"steps": args.steps} if args.steps is not None else {"epochs": args.epochs}
    steps = args.steps if args.steps is not None else args.epochs * len(splits.train)
    print(f"[train] {MODEL} on {DATA}: {steps} steps at batch {args.batch_size} "
          f"({steps / len(splits.train):.2f} epochs), SGD lr 0.1 with warm-up and cosine decay", flush=True)
    started = time.perf_counter()
    trained = distill(dense, config={"data": splits.train, **budget, "lr": 0.1, "momentum": 0.9,
                                     "weight_decay": 5e-4, "warmup_steps": min(100, steps // 10),
                                     "kd_weight": 0.0}).program.eval()
    print(f"[train] done in {time.perf_counter() - started:.0f} s", flush=True)
    with staged_folder(output) as staging:
        trained.save(staging / "dense_train.pt2")
    report = compress(trained, recipe, splits, output, data=DATA, options=options_from(args),
                      log=lambda line: print(line, flush=True))
    print()
    print(console_summary(report))
    print(f"wrote {output / 'model.onnx'} (compressed, batch 1), {output / 'report.md'}, {output / 'report.json'}; "
          f"the trained dense model is {output / 'dense_train.pt2'}")
    return 0


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((torch.as_tensor(logits).argmax(1) == labels).sum())


def _imagenet_demo(args) -> int:
    images, labels = load_imagenet_batch(size=224)
    model = torchvision.models.mobilenet_v2(weights=None)
    load_weights(model, mobilenet_v2_weights_path())
    dense = capture(model.eval(), images[:1], name="mobilenet_v2").eval()
    cost = count(dense)
    print(f"[inspect] mobilenet_v2: {cost.params / 1e6:.2f} M params, {cost.macs / 1e6:.1f} M MACs, "
          f"{len(dense.graph.nodes)} nodes")

    result = Pipeline([fold_batchnorm]).run(dense)
    folded, stats = result.program, result.stats()["fold_batchnorm"]
    print(f"[fold_batchnorm] folded {stats['folded']} of {stats['batch_norms']} batch norms "
          "(verified: re-exports, outputs unchanged)")

    path = check_output_folder(args.output) / "mobilenet_v2_folded.onnx"
    with staged_file(path) as staging:
        exported = export_onnx(folded, staging)
        parity = check_parity(folded, staging)
    print(f"[export] {path}: {exported.node_count} ONNX nodes, parity max abs error {parity.max_abs_error:.2e}")

    with torch.no_grad():
        torch_logits = torch.cat([folded(images[i:i + 1]) for i in range(len(images))])
    session = OnnxRuntimeSession(path, threads=args.threads)
    ort_logits = torch.cat([torch.from_numpy(session.run(images[i:i + 1])[0]) for i in range(len(images))])
    print(f"[accuracy] top-1 on {len(labels)} real ImageNet images: torch {_top1(torch_logits, labels)}/{len(labels)}, "
          f"ONNX Runtime {_top1(ort_logits, labels)}/{len(labels)}")

    comparison = compare_latency(torch_runner(dense, threads=args.threads),
                                 torch_runner(folded, threads=args.threads), warmup=5, runs=args.runs)
    ort = measure_latency(onnx_runner(path, [images[:1]], threads=args.threads), warmup=5, runs=args.runs)
    print(f"[latency] torch, batch 1, {args.threads} threads: dense {comparison.a.median_ms:.2f} ms, "
          f"folded {comparison.b.median_ms:.2f} ms ({comparison.speedup:.2f}x, measured side by side)")
    print(f"[latency] ONNX Runtime, batch 1, {args.threads} threads: median {ort.median_ms:.2f} ms, "
          f"p90 {ort.p90_ms:.2f} ms, p99 {ort.p99_ms:.2f} ms")
    return 0

