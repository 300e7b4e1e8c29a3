"""make_demo_checkpoint: train the small dense model that `prunefx demo` starts from, so the demo need not
train one (it took ~10 of its minutes). The weights land in prunefx/checkpoints/ as a plain state dict of
tensors (read back with torch.load(weights_only=True), which never runs code), with the sha256 the demo
checks before loading.

    nice -n 10 .venv/bin/python scripts/make_demo_checkpoint.py [--steps 1600] [--threads 1]

prunefx:resnet20 (0.27 M parameters, 1.1 MB) on Fashion-MNIST, the library's own loaders (55000 training
images with crop and flip; 5000 held out, seed 0), --steps steps (429 make an epoch): SGD with Nesterov
momentum 0.9, weight decay 5e-4, lr 0.1 with a linear warm-up over 20 steps then cosine decay, batch 128,
torch seed 0. The accuracy on the 5000 held-out images and on the 10000 test images is printed and written
beside the weights (JSON), with how they were trained and the command that made them. The demo wants a model
trained to about 90 % or more: a weakly trained one leaves little for pruning to keep.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

from prunefx.data.load import load_data
from prunefx.data.splits import accuracy as count_correct
from prunefx.models import build_model

MODEL = "prunefx:resnet20"
FOLDER = Path(__file__).resolve().parent.parent / "prunefx" / "checkpoints"
WEIGHTS = FOLDER / "resnet20_fashion_mnist.pt"
TRAINING = ("55000 Fashion-MNIST training images (5000 held out, seed 0), random crop (2 px padding) and flip; "
            "SGD, Nesterov momentum 0.9, weight decay 5e-4, lr 0.1, 20 warm-up steps then cosine decay; "
            "cross-entropy; torch seed 0")


def learning_rate(step: int, total: int, peak: float = 0.1, warmup: int = 20) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(model: torch.nn.Module, loader, total: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    step = 0
    model.train()
    for epoch in range(math.ceil(total / len(loader))):
        loader.set_epoch(epoch)  # each epoch its own order, crops and flips (StaticBatches draws them per epoch)
        for images, labels in itertools.islice(loader, total - step):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 25 == 0:
                print(f"epoch {epoch + 1} step {step}/{total} loss {loss.item():.3f}", flush=True)
            if step == total:
                return


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    """Top-1 over the loader's images, the padding of its last batch (label -1) left out."""
    model.eval()
    counts = [count_correct(model(images), labels) for images, labels in loader]
    return sum(correct for correct, _ in counts) / sum(seen for _, seen in counts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1600, help="training steps at batch 128 (429 per epoch)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_model(MODEL).module
    splits = load_data("fashion-mnist", 128, validation=5000)
    started = time.perf_counter()
    train(model, splits.train, args.steps)
    seconds = round(time.perf_counter() - started)
    validation, test = accuracy(model, splits.val), accuracy(model, splits.test)
    FOLDER.mkdir(exist_ok=True)
    torch.save({name: tensor.detach().clone() for name, tensor in model.state_dict().items()}, WEIGHTS)
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    info = {"model": MODEL, "data": "fashion-mnist", "steps": args.steps, "epochs": round(args.steps / len(splits.train), 2),
            "batch": 128, "training": TRAINING, "validation_accuracy": validation, "test_accuracy": test,
            "sha256": digest, "bytes": WEIGHTS.stat().st_size, "train_seconds": seconds, "threads": args.threads,
            "command": f"nice -n 10 .venv/bin/python scripts/make_demo_checkpoint.py --steps {args.steps} "
                       f"--threads {args.threads}"}
    WEIGHTS.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
