"""prunefx demo: the main job end to end on pretrained ImageNet MobileNetV2 (offline weights).

inspect -> fold batch norm (verified, exact) -> export to ONNX (checked, parity) -> top-1 on the
20 real ImageNet images in torch and in ONNX Runtime -> latency, dense against folded, side by side.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.graph import capture, count
from prunefx.models import load_weights
from prunefx.passes import Pipeline, fold_batchnorm
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
HELP = "inspect, fold batch norm, export and benchmark pretrained MobileNetV2 on real ImageNet images"
TAKES_MODEL = False


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", default="out/demo", help="folder for the ONNX file (default out/demo)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime (default 2)")


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((torch.as_tensor(logits).argmax(1) == labels).sum())


def run(args) -> int:
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

    path = Path(args.output) / "mobilenet_v2_folded.onnx"
    exported = export_onnx(folded, path)
    parity = check_parity(folded, path)
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

