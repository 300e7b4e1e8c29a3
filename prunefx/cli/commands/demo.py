"""prunefx demo: the recommended pruning path end to end, in under 3 minutes on a 2-core CPU.

Default: `prunefx:resnet20` trained on Fashion-MNIST (the checksummed checkpoint in prunefx/checkpoints/,
read with torch.load(weights_only=True)), pruned as `prunefx prune --macs M --calibrate fashion-mnist` does
by default, distilled for a few steps and timed against the dense model on ONNX Runtime; `--imagenet` runs
the earlier MobileNetV2 demo. The stages and what they print: see docs/getting-started.md, 'The demo'.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.cli import flags
from prunefx.cli.arguments.demo import PRUNING_ONLY
from prunefx.data.calibration import calibration_data
from prunefx.data.load import load_data
from prunefx.data.splits import IGNORED_LABEL
from prunefx.data.splits import accuracy as count_correct
from prunefx.deliverable import write_model
from prunefx.graph import capture, count
from prunefx.graph.counted import counted
from prunefx.graph.errors import PrunefxError
from prunefx.graph.rebatch import rebatch
from prunefx.models import build_model, load_weights
from prunefx.output import staged_folder
from prunefx.output_paths import check_output_folder
from prunefx.passes import Pipeline, distill, fold_batchnorm, recalibrate_batchnorm, remove_channels
from prunefx.reports import report_json
from prunefx.reports.budget_text import interval_text
from prunefx.reports.report_facts import Costs, Latency, ReportFacts
from prunefx.reports.report_json import output_files
from prunefx.runtime import (
    OnnxRuntimeSession,
    check_parity,
    compare_latency,
    export_onnx,
    measure_latency,
    onnx_runner,
    onnx_side_by_side,
    torch_runner,
)
from prunefx.runtime.backends import Settings

NAME = "demo"
MODEL = "prunefx:resnet20"
DATA = "fashion-mnist"
CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "resnet20_fashion_mnist.pt"
ROUNDS = 8  # fresh processes the delivered model is timed over against the dense one, alternating (fewer when
# --runs is below it: a round times each model at least once)


def run(args) -> int:
    if args.imagenet:
        given = [flags.flag_of(name) for name, default in PRUNING_ONLY.items() if getattr(args, name) != default]
        if given:
            raise PrunefxError(f"{', '.join(given)}: settings of the pruning demo; the --imagenet demo folds batch "
                               "norms and prunes nothing")
        return _imagenet_demo(args)
    return _pruning_demo(args)


class _Clock:
    """Seconds per stage, for the closing 'where the time went' line."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = self.last = time.perf_counter()

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.seconds[stage] = now - self.last
        self.last = now
        return self.seconds[stage]


def _pruning_demo(args) -> int:
    output = check_output_folder(args.output)
    clock = _Clock()
    dense, splits, info = _dense_model(args.batch_size)
    before = count(dense)
    print(f"[load] {MODEL} from {CHECKPOINT.name} (sha256 checked; {info['steps']} steps on Fashion-MNIST by "
          f"scripts/make_demo_checkpoint.py); {before.macs / args.batch_size / 1e6:.1f} M MACs per image, "
          f"{before.params / 1e6:.3f} M parameters", flush=True)
    clock.lap("load")
    test = _test_batches(splits, args.eval_images)
    dense_accuracy = _accuracy(dense, test)
    print(f"[dense] test accuracy {dense_accuracy:.2%} ({_images(test)} test images)", flush=True)
    clock.lap("evaluate dense")

    calibration = calibration_data(DATA, dense.example_inputs[0], args.calibration_images)
    calibrated = sum(len(batch[0]) for batch in calibration.batches)
    print(f"[calibrate] {calibration.description}", flush=True)
    # prune's default given calibration data: obs channel choice with compensation (remove_channels resolves
    # them from the data), then the batch norms re-estimated on the same images.
    result = Pipeline([(remove_channels, {"macs": args.macs, "calibration": calibration.batches}),
                       (recalibrate_batchnorm, {"data": calibration.batches})], verify="full").run(dense)
    pruning = result.stats()["remove_channels"]
    after = count(result.program)
    second_order = " (second order)" if pruning["importance"] == "obs" else ""
    print(f"[prune] --macs {args.macs:g}: channels chosen by {pruning['importance']}{second_order} on the "
          f"calibration images, {'the remaining weights compensated, ' if pruning.get('compensation') else ''}"
          f"batch norms recalibrated: {before.macs / args.batch_size / 1e6:.1f} M -> "
          f"{after.macs / args.batch_size / 1e6:.1f} M MACs per image ({after.macs / before.macs:.2f}), "
          f"{before.params / 1e6:.3f} M -> {after.params / 1e6:.3f} M parameters "
          f"({after.params / before.params:.2f}), in {clock.lap('calibrate and prune'):.0f} s", flush=True)
    one_shot_accuracy = _accuracy(result.program, test)
    print(f"[one-shot] test accuracy {one_shot_accuracy:.2%}, before any training", flush=True)
    clock.lap("evaluate one-shot")

    distilled = distill(result.program, config={"data": splits.train, "steps": args.kd_steps, "teacher": dense,
                                                "lr": 0.02, "momentum": 0.9, "warmup_steps": 0}).program.eval()
    kd_accuracy = _accuracy(distilled, test)
    print(f"[kd] {args.kd_steps} steps of distillation from the dense model (batch {args.batch_size}): test "
          f"accuracy {kd_accuracy:.2%}", flush=True)
    clock.lap("distill")

    with staged_folder(output) as staging:  # one publish: the files, measured where they lie, and their report
        delivered, measured = _deliver(staging, dense, distilled, args)
        interval = measured.extra["interval"]
        print(f"[measured] model.onnx vs dense.onnx on ONNX Runtime, batch 1, {args.threads} thread(s), {args.runs} "
              f"runs each over {measured.extra['rounds']} fresh processes, alternating: {measured.compressed_ms:.3f} ms vs "
              f"{measured.dense_ms:.3f} ms = {measured.speedup:.2f}x"
              f"{interval_text(interval, ' (') + ')' if interval else ''}", flush=True)
        clock.lap("export and measure")
        total = time.perf_counter() - clock.started
        print("[time] " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in clock.seconds.items())
              + f"; total {total:.0f} s", flush=True)
        costs = Costs(before.macs // args.batch_size, after.macs // args.batch_size, before.params, after.params)
        report_json.write(staging, ReportFacts(
            NAME, dense.name, costs, output_files(output, "model.pt2", "model.onnx", "dense.onnx", "report.json"),
            parity=delivered["parity"], calibration=calibration.description, latency=measured, sections={
                "checkpoint": info, "calibration_images": calibrated,
                "pruning": pruning, "recalibrate_batchnorm": result.stats().get("recalibrate_batchnorm"),
                "dense_accuracy": dense_accuracy, "one_shot_accuracy": one_shot_accuracy, "kd_accuracy": kd_accuracy,
                "kd_steps": args.kd_steps, "eval_images": _images(test), "seconds": clock.seconds,
                "total_seconds": total, **{key: value for key, value in delivered.items() if key != "parity"}}))
    print(f"wrote {output / 'model.onnx'}, {output / 'dense.onnx'}, {output / 'model.pt2'}, {output / 'report.json'}")
    return 0


def _dense_model(batch_size: int):
    """The shipped checkpoint, checked against the sha256 its maker recorded, in a captured Program."""
    info = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    digest = hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    if digest != info["sha256"]:
        raise PrunefxError(f"{CHECKPOINT} does not match its recorded sha256 ({digest[:12]} != {info['sha256'][:12]}); "
                           f"remake it with {info['command']}")
    module = load_weights(build_model(MODEL).module, CHECKPOINT).eval()
    splits = load_data(DATA, batch_size, validation=0)
    example = torch.zeros(batch_size, *splits.input_shape)
    return capture(module, example, name="resnet20").eval(), splits, info


def _test_batches(splits, images: int) -> list:
    """The first batches of the test split covering `images` images, whole batches (the captured graph is
    static; the last batch of the split is padded with label -1, which the counts leave out)."""
    wanted = math.ceil(images / splits.test.batch_size)
    return [batch for _, batch in zip(range(wanted), splits.test)]


def _images(batches) -> int:
    return sum(int((labels != IGNORED_LABEL).sum()) for _, labels in batches)


@torch.no_grad()
def _accuracy(program, batches) -> float:
    correct = sum(count_correct(program(images), labels)[0] for images, labels in batches)
    return correct / _images(batches)


def _deliver(folder: Path, dense, compressed, args) -> tuple[dict, Latency]:
    """model.pt2/model.onnx (batch 1) and dense.onnx written into `folder`: write_model's entries, and their
    latencies side by side."""
    dense_one, compressed_one = rebatch(dense, 1), rebatch(compressed, 1)
    delivered = write_model(folder, compressed_one, opset=args.opset)
    export_onnx(dense_one, folder / "dense.onnx", opset=args.opset)
    inputs = dense_one.example_inputs
    # over fresh processes, as the search's confirmation and `bench --vs` measure (runtime.onnx_side_by_side)
    comparison = onnx_side_by_side([(folder / name, inputs) for name in ("dense.onnx", "model.onnx")],
                                   Settings(runs=args.runs, warmup=20, threads=args.threads, rounds=ROUNDS))
    return delivered, Latency("onnxruntime", args.threads, args.runs, comparison.a.median_ms,
                              comparison.b.median_ms, comparison.speedup,
                              extra=comparison.reported())


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((torch.as_tensor(logits).argmax(1) == labels).sum())


def _imagenet_top1(folded, path: Path, images: torch.Tensor, labels: torch.Tensor, threads: int) -> dict[str, int]:
    """Top-1 hits of the folded model on `images`, one image at a time, in torch and in ONNX Runtime from `path`."""
    with torch.no_grad():
        torch_logits = torch.cat([folded(images[i:i + 1]) for i in range(len(images))])
    session = OnnxRuntimeSession(path, threads=threads)
    ort_logits = torch.cat([torch.from_numpy(session.run(images[i:i + 1])[0]) for i in range(len(images))])
    return {"torch": _top1(torch_logits, labels), "onnxruntime": _top1(ort_logits, labels)}


def _imagenet_demo(args) -> int:
    images, labels = load_imagenet_batch(size=224)
    import torchvision  # on use: its import costs every prunefx command 2 s

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

    output = check_output_folder(args.output)
    path = output / "mobilenet_v2_folded.onnx"
    with staged_folder(output) as staging:  # the output folder, all of this run: the file and its report.json
        exported = export_onnx(folded, staging / path.name, opset=args.opset)
        parity = check_parity(folded, staging / path.name)
        print(f"[export] {path}: {exported.node_count} ONNX nodes, parity max abs error {parity.max_abs_error:.2e}")
        accuracy = _imagenet_top1(folded, staging / path.name, images, labels, args.threads)
        print(f"[accuracy] top-1 on {len(labels)} real ImageNet images: torch {accuracy['torch']}/{len(labels)}, "
              f"ONNX Runtime {accuracy['onnxruntime']}/{len(labels)}")
        comparison = compare_latency(torch_runner(dense, threads=args.threads),
                                     torch_runner(folded, threads=args.threads), warmup=5, runs=args.runs)
        ort = measure_latency(onnx_runner(staging / path.name, [images[:1]], threads=args.threads), warmup=5,
                              runs=args.runs)
        print(f"[latency] torch, batch 1, {counted(args.threads, 'thread')}: dense {comparison.a.median_ms:.2f} ms, "
              f"folded {comparison.b.median_ms:.2f} ms ({comparison.speedup:.2f}x, measured side by side)")
        print(f"[latency] ONNX Runtime, batch 1, {counted(args.threads, 'thread')}: median {ort.median_ms:.2f} ms, "
              f"p90 {ort.p90_ms:.2f} ms, p99 {ort.p99_ms:.2f} ms")
        after = count(folded)
        report_json.write(staging, ReportFacts(
            NAME, dense.name, Costs(cost.macs, after.macs, cost.params, after.params),
            output_files(output, path.name, "report.json"), parity=parity.entry(),
            latency=Latency("torch", args.threads, args.runs, comparison.a.median_ms, comparison.b.median_ms,
                            comparison.speedup),
            sections={"fold_batchnorm": stats, "top1": {**accuracy, "images": len(labels)},
                      "onnxruntime_ms": {"median": ort.median_ms, "p90": ort.p90_ms, "p99": ort.p99_ms}}))
    print(f"wrote {path}, {output / 'report.json'}")
    return 0

