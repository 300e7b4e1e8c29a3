"""Prune an Ultralytics YOLO with prunefx, then train, validate and export it with Ultralytics' own tools.

    python examples/ultralytics_prune_train.py ultralytics:yolov8n.yaml --data data.yaml --macs 0.5 --epochs 1 -o out/

1. the dense DetectionModel is built from the yaml with the data set's classes (or loaded from a .pt) and
   captured in export mode (prunefx/models/ultralytics_models.py); remove_channels prunes it to `--macs` of its MACs (l2
   importance, widths multiples of 8, the box distribution's softmax and C2PSA's attention kept whole);
2. prunefx.interop.ultralytics_bridge.to_ultralytics_module writes the pruned graph back into Ultralytics' own
   classes, proven equal to the graph on two inputs;
3. Ultralytics trains it: its trainer normally rebuilds the model from the yaml (dense widths) and copies
   weights by matching shapes, which would silently drop the pruning; a trainer whose `get_model` returns
   the pruned module is Ultralytics' documented way to hand it a model. The widths are checked after training;
4. `val` gives mAP on the data's val split; `export(format="onnx")` writes ONNX, run with ONNX Runtime and
   compared with the trained module's own output.
Writes into OUTPUT: weights.pt (Ultralytics checkpoint of the trained pruned model), metrics.json, model.onnx.
A refusal (a capture, the write-back's proof) is one line on stderr, and the exit status 2.
Ultralytics is AGPL-3.0: this example uses it; prunefx itself never depends on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from prunefx.graph import PrunefxError, capture, count
from prunefx.interop.recovery import PruneWhileTraining
from prunefx.interop.ultralytics_bridge import (
    export_mode,
    keep_nodes,
    prune_while_training_trainer,
    to_ultralytics_module,
    training_mode,
)
from prunefx.models.ultralytics_models import prepare_ultralytics
from prunefx.passes.remove_channels import remove_channels

PREFIX = "ultralytics:"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ultralytics:NAME.yaml or ultralytics:PATH.pt")
    parser.add_argument("--data", required=True, help="Ultralytics data yaml (YOLO txt labels)")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the dense MACs kept")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nbs", type=int, default=64,
                        help="Ultralytics' nominal batch size: gradients accumulate to it per optimizer step")
    parser.add_argument("--cpd", type=int, metavar="INTERVAL",
                        help="prune while Ultralytics trains (CPD, 2 cuts every INTERVAL optimizer steps, "
                             "distillation from the dense model) instead of once before training")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    return parser.parse_args(argv)


def dense_model(reference: str, data: str) -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint
    if not reference.startswith(PREFIX):
        raise PrunefxError(f"name an Ultralytics model as {PREFIX}NAME, not {reference!r}")
    name = reference[len(PREFIX):]
    if name.endswith(".pt"):
        model = load_checkpoint(name, device="cpu")[0]
    else:
        classes = len(yaml.safe_load(Path(data).read_text())["names"])
        model = DetectionModel(name, nc=classes, verbose=False)
    return prepare_ultralytics(model)  # what `prunefx prune ultralytics:NAME` captures


def trainer_for(module: torch.nn.Module):
    """Ultralytics' DetectionTrainer with `get_model` returning the pruned module instead of a yaml rebuild."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    class PrunedTrainer(DetectionTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            return module

    return PrunedTrainer


def widths(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.state_dict().items() if p.dim() > 0}


def onnx_matches(path: str, model: torch.nn.Module, imgsz: int) -> float:
    """Largest difference between ONNX Runtime and the module on one random image, relative to the output."""
    import onnxruntime
    image = torch.rand(1, 3, imgsz, imgsz)
    with torch.no_grad():  # on a copy: export mode is no state to leave on the trained model
        expected = export_mode(copy.deepcopy(model))(image)
    expected = (expected[0] if isinstance(expected, (tuple, list)) else expected).numpy()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except PrunefxError as error:  # a refusal (the write-back's proof, a capture): one line, exit 2
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from ultralytics import YOLO
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    dense = dense_model(args.model, args.data)
    program = capture(dense, torch.rand(1, 3, args.imgsz, args.imgsz), name=args.model).eval()
    macs_before = count(program).macs
    if args.cpd:
        session = PruneWhileTraining(program, macs=args.macs, events=2, interval=args.cpd, round_to=8,
                                     keep=tuple(keep_nodes(program)),
                                     write_back=lambda pruned: to_ultralytics_module(pruned, dense),
                                     initial_module=training_mode(copy.deepcopy(dense)))
        teacher = training_mode(copy.deepcopy(dense))  # distillation from the dense YOLO while it prunes
        pruned, trainer = session.module, prune_while_training_trainer(session, teacher=teacher)
    else:
        remove_channels(program, config={"macs": args.macs, "importance": "l2", "round_to": 8,
                                         "keep": keep_nodes(program)})
        pruned = to_ultralytics_module(program, dense)
        trainer = trainer_for(pruned)

    yolo = YOLO(dense.yaml["yaml_file"] if "yaml_file" in dense.yaml else args.model[len(PREFIX):])
    yolo.model = pruned
    settings = {"data": args.data, "imgsz": args.imgsz, "batch": args.batch, "workers": 0, "device": args.device,
                "plots": False, "amp": False}
    yolo.train(epochs=args.epochs, nbs=args.nbs, project=str(output.resolve()), name="train", exist_ok=True,
               trainer=trainer, **settings)
    if args.cpd:  # the model after the last cut
        program, pruned = session.program, session.module
    trained = yolo.model  # Ultralytics' saved best (EMA) model, loaded back
    kept = widths(trained) == widths(pruned)
    metrics = yolo.val(**settings, project=str(output.resolve()), name="val", exist_ok=True)
    onnx_file = yolo.export(format="onnx", imgsz=args.imgsz, simplify=False, dynamic=False, device=args.device)
    shutil.copy(onnx_file, output / "model.onnx")
    shutil.copy(yolo.trainer.best if Path(yolo.trainer.best).is_file() else yolo.trainer.last, output / "weights.pt")
    report = {"model": args.model, "macs_kept": count(program).macs / macs_before, "widths_kept_by_training": kept,
              "map50": float(metrics.box.map50), "map50_95": float(metrics.box.map),
              "onnx_relative_difference": onnx_matches(str(output / "model.onnx"), trained, args.imgsz),
              "epochs": args.epochs, "imgsz": args.imgsz, "cpd_cuts": session.events if args.cpd else None}
    (output / "metrics.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
