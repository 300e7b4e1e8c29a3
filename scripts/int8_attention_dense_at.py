"""Train benchmarks/int8_attention.py's ViT at an older commit and save it with its calibration batches, in the
file format of today's `int8_attention.py --save-dense`, so that today's `--dense-from FILE` quantizes it.

Older commits have no --save-dense (and before it no --seed), so this script imports that commit's own
benchmark module and repeats what its main() did before quantizing: read the calibration batches, then train
`steps` SGD steps with int8_latency's schedule. With a seed other than 0 it passes the seed where today's
`--seed` does (the initialisation and the trainer's data order). Run it from a worktree of the commit:

    git worktree add /tmp/at-08bf9aa 08bf9aa
    cd /tmp/at-08bf9aa && PYTHONPATH=/path/to/scripts/at_commit PRUNEFX_SOURCES=/tmp/at-08bf9aa OMP_NUM_THREADS=2 \\
        /path/to/.venv/bin/python /path/to/scripts/int8_attention_dense_at.py 120 /tmp/dense-08bf9aa-seed1.pt 1

(scripts/at_commit/sitecustomize.py makes every prunefx package load from the worktree: PYTHONPATH=. alone would
load `prunefx` from it but `prunefx.graph`, `.passes` and `.runtime` from this checkout, through the editable
install.)

Used for benchmarks/results/reproduced/dense-at-08bf9aa*/int8_attention.json (headline_reproduction.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from prunefx.data.splits import fashion_mnist_data  # the worktree's (through scripts/at_commit)


def main(steps: int, path: Path, seed: int) -> None:
    sys.path.insert(0, "benchmarks")  # the checked-out commit's benchmark module and its siblings
    import int8_attention as script  # the worktree's, found through the path above

    torch.set_num_threads(2)
    data = fashion_mnist_data(script.FASHION_MNIST_BATCH, augment=True)
    batches = script.calibration_batches(data)  # before training, as main() does
    torch.manual_seed(seed)
    program = script.capture(script.build_model(f"prunefx:{script.MODEL}").module, next(iter(data.train))[0],
                             name=script.MODEL)
    dense = script.distill(program, config={
        "data": data.train, "steps": steps, "kd_weight": 0.0, "seed": seed, "warmup_steps": steps // 4,
        "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "progress": False}).program.eval()
    torch.save({"weights": dense.state_dict(), "calibration": [list(batch) for batch in batches]}, path)
    print(f"saved {path}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {Path(sys.argv[0]).name} STEPS FILE SEED (run from a worktree of the commit)")
    main(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
