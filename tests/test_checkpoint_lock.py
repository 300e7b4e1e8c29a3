"""One training run per checkpoint_dir: a second run given the directory of one still training is refused before
it trains, and the first run's checkpoint is left as it was (the oracle: its bytes)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.passes.training.engine import PROGRAM_FILE, STATE_FILE, TrainConfig, Trainer, TrainingError


def _program():
    torch.manual_seed(0)
    return capture(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval(),
                   torch.randn(4, 3, 8, 8)).eval()


def _data():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 3, (4,), generator=generator))]


def _fit(directory, **extra):
    config = TrainConfig(steps=2, lr=0.01, kd_weight=0.0, checkpoint_dir=directory, progress=False, **extra)
    return Trainer(_program(), teacher=None, data=_data(), config=config).fit()


def test_a_run_given_the_checkpoint_dir_of_a_run_still_training_is_refused(tmp_path):
    directory = tmp_path / "checkpoints"
    _fit(directory)
    written = {name: (directory / name).read_bytes() for name in (PROGRAM_FILE, STATE_FILE)}
    # the other run: another process holding the directory as a training run does
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys; d = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(d, fcntl.LOCK_EX); "
        "print('held', flush=True); sys.stdin.read()"), str(directory)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match="in use by another training run"):
            _fit(directory, resume=False)
    finally:
        holder.communicate("")
    assert {name: (directory / name).read_bytes() for name in written} == written
    assert _fit(directory, resume=True)["resumed_from"] == 2  # the holder gone: the directory is free again


def test_the_lock_is_released_when_a_run_ends_even_by_an_error(tmp_path):
    directory = tmp_path / "checkpoints"
    with pytest.raises(TrainingError):
        Trainer(_program(), teacher=None, data=[], config=TrainConfig(steps=2, checkpoint_dir=directory, progress=False)).fit()
    assert not directory.exists()  # it made the folder and wrote nothing there: the folder is gone again
    _fit(directory)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises should the run have kept its lock
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("kind", ["file", "link to nothing", "read-only"])
def test_a_checkpoint_dir_that_cannot_hold_checkpoints_is_refused_before_training(tmp_path, monkeypatch, kind):
    """Refused in one TrainingError before the first step (not by the checkpoint written after the last one),
    and the caller's program given back as it came (eval mode, its weights)."""
    path = tmp_path / "checkpoints"
    if kind == "file":
        path.write_text("mine")
    elif kind == "link to nothing":
        path.symlink_to(tmp_path / "gone")
    else:  # a read-only file system (root ignores permission bits): the probe write fails as it would there
        from prunefx.passes.training import checkpoint_lock
        monkeypatch.setattr(checkpoint_lock.tempfile, "TemporaryFile",
                            lambda **_: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    program, steps = _program(), []
    weights = {name: value.clone() for name, value in program.state_dict().items()}
    config = TrainConfig(steps=2, lr=0.01, kd_weight=0.0, checkpoint_dir=path, progress=False)
    trainer = Trainer(program, teacher=None, data=_data(), config=config, after_step=[lambda _, step: steps.append(step)])
    with pytest.raises(TrainingError, match=f"checkpoint_dir {path}"):
        trainer.fit()
    assert steps == [] and not program.training and not program.module.training
    assert all(torch.equal(value, weights[name]) for name, value in program.state_dict().items())
    if kind == "file":
        assert path.read_text() == "mine"


def test_a_run_that_fails_before_its_first_checkpoint_leaves_none_of_the_folders_it_made(tmp_path):
    # mkdir(parents=True) made run1/ and ckpt/: only ckpt/ was removed again
    directory = tmp_path / "runs" / "run1" / "ckpt"

    def fails(trainer, step):
        raise RuntimeError("the user's hook failed")

    config = TrainConfig(steps=2, lr=0.01, kd_weight=0.0, checkpoint_dir=directory, progress=False)
    with pytest.raises(RuntimeError, match="hook failed"):
        Trainer(_program(), teacher=None, data=_data(), config=config, after_step=[fails]).fit()
    assert list(tmp_path.iterdir()) == []
