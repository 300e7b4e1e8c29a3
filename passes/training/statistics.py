"""What `Trainer.fit` reports: steps and epochs run, the final losses, evaluations, time and throughput.

The final losses are means over the last `_STATS_WINDOW` steps: a single step's loss is noisy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prunefx.passes.training.engine import Trainer

_STATS_WINDOW = 20  # final losses are averaged over this many steps, single steps are noisy


def fit_statistics(trainer: Trainer, start_step: int, train_seconds: float, eval_seconds: float,
                   resumed_from) -> dict:
    window = trainer.log[-_STATS_WINDOW:]
    mean = {key: (sum(entry[key] for entry in window) / len(window) if window else float("nan"))
            for key in ("loss", "task", "kd", "feature")}
    return {
        "steps": trainer.step, "steps_run": trainer.step - start_step, "resumed_from": resumed_from,
        "epochs": trainer.epoch + (trainer.batch_in_epoch / len(trainer.data) if hasattr(trainer.data, "__len__") else 0),
        "train_loss": mean["loss"], "task_loss": mean["task"], "kd_loss": mean["kd"],
        "feature_loss": mean["feature"], "eval": list(trainer.history), "world_size": trainer.world_size,
        "precision": trainer.config.precision,
        "seconds": train_seconds + eval_seconds, "train_seconds": train_seconds,
        "images_per_second": (trainer.step - start_step) * trainer.global_batch() / max(train_seconds, 1e-9),
    }
