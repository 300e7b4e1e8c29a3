"""Prune a Fashion-MNIST ResNet-20 to half its MACs while training it in a plain PyTorch loop.

CPD's schedule (prunefx.PruneWhileTraining: Fisher scores after every backward, a cut every --interval
steps) and distillation from the dense model (prunefx.DistillationLoss) run inside a loop written by
hand: SGD with momentum, weight decay on kernels only, a cosine learning rate, the loss, the steps.

    .venv/bin/python examples/plain_loop_recovery.py --weights dense.pth --steps 429 -o out/plain

--weights is a state dict of prunefx's ResNet-20 (`prunefx:resnet20`, trained on Fashion-MNIST). Writes
OUT/model.pt2 (the pruned, trained model at the training batch size) and OUT/metrics.json (test accuracy
on the 10,000 test images, MACs kept, the cuts).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import prunefx
from prunefx.data.splits import fashion_mnist_data
from prunefx.models.small import resnet20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="state dict of a trained prunefx:resnet20")
    parser.add_argument("--steps", type=int, default=429, help="optimizer steps (429 = one epoch at batch 128)")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the dense MACs kept")
    parser.add_argument("--events", type=int, default=5, help="number of cuts")
    parser.add_argument("--interval", type=int, default=60, help="steps between cuts")
    parser.add_argument("--round-to", type=int, default=8, help="every pruned width a multiple of this")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--kd-weight", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild-optimizer", action="store_true",
                        help="a new optimizer after every cut (momentum restarts, as prunefx's trainer does with "
                             "optimizer_state: restart) instead of carrying its state over")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    return parser.parse_args(argv)


def accuracy(model, session: prunefx.PruneWhileTraining, batches) -> float:
    """Top-1 accuracy in eval mode; padded items of the last batch (label -1) are not counted."""
    session.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            real = labels >= 0
            correct += (model(images).argmax(1)[real] == labels[real]).sum().item()
            total += real.sum().item()
    session.train()
    return correct / total


def sgd(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    """Weight decay on kernels and matrices only, not on biases and norm scales."""
    params = list(model.parameters())
    return torch.optim.SGD([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                           lr=lr, momentum=0.9)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = fashion_mnist_data(args.batch_size, validation=5000, seed=args.seed)
    dense = resnet20()
    dense.load_state_dict(torch.load(args.weights, weights_only=True))
    example = next(iter(data.train))[0]

    kd = prunefx.DistillationLoss(dense, kd_weight=args.kd_weight, temperature=args.temperature)
    session = prunefx.PruneWhileTraining(dense, example, macs=args.macs, events=args.events,
                                         interval=args.interval, round_to=args.round_to)
    session.train()
    model = session.module
    optimizer = sgd(model, args.lr, args.weight_decay)
    # Cosine from lr to 0 over the run, stepped per optimizer step.
    def cosine(s: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * s / args.steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)

    step, epoch = 0, 0
    while step < args.steps:
        data.train.set_epoch(epoch)  # a new shuffle and new augmentations every epoch
        for images, labels in data.train:
            loss = kd(model(images), images, labels)
            optimizer.zero_grad()
            loss.backward()
            session.after_backward()
            optimizer.step()
            schedule.step()
            step += 1
            if session.maybe_cut(None if args.rebuild_optimizer else optimizer, train_loss=loss.item()):
                model = session.module
                if args.rebuild_optimizer:  # the schedule goes on where it was
                    optimizer = sgd(model, args.lr, args.weight_decay)
                    for group in optimizer.param_groups:
                        group["initial_lr"] = args.lr
                    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine, last_epoch=step - 1)
                print(f"step {step}: cut to {session.events[-1]['macs'] / session.statistics()['macs_before']:.3f}"
                      f" of the MACs, loss {loss.item():.3f}", file=sys.stderr)
            if step == args.steps:
                break
        epoch += 1

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    metrics = {"test_accuracy": accuracy(model, session, data.test), "steps": step,
               "pruning": session.statistics()}
    session.eval()
    session.program.save(output / "model.pt2")
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f} %, "
          f"{metrics['pruning']['target']['achieved']:.3f} of the dense MACs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
