"""Recovery training with knowledge distillation: losses, schedule, checkpoints, hooks, DDP, the pass."""

from __future__ import annotations

import errno
import importlib
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.passes import distill, get_pass, remove_channels
from prunefx.passes.training import processes as training_processes
from prunefx.passes.training.engine import (
    PROGRAM_FILE,
    STATE_FILE,
    TrainConfig,
    Trainer,
    TrainingError,
    evaluate,
    kd_loss,
    make_scheduler,
)
from prunefx.passes.training.processes import resolve_device
from prunefx.reports.compression import pass_summary

BATCH = 8
CLASSES = 5


class SmallNet(nn.Module):
    def __init__(self, width: int = 8, *, batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.drop(x.mean((2, 3))))


def _program(seed: int = 0, *, batch: int = BATCH, **kwargs):
    torch.manual_seed(seed)
    return capture(SmallNet(**kwargs).eval(), torch.randn(batch, 3, 8, 8)).eval()


def _batches(count: int, *, batch: int = BATCH, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=generator), torch.randint(0, CLASSES, (batch,), generator=generator))
            for _ in range(count)]


def _train(program, teacher, data, **options):
    options.setdefault("progress", False)
    trainer = Trainer(program, teacher=teacher, data=data, config=TrainConfig(**options))
    return trainer, trainer.fit()


# --- losses ----------------------------------------------------------------------------------------

def _softmax(row, temperature):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_hand_computed_kl():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 1.0]]
    temperature = 2.0
    kl_sum = 0.0
    for s_row, t_row in zip(student, teacher):
        p, q = _softmax(t_row, temperature), _softmax(s_row, temperature)
        kl_sum += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = kl_sum / len(student) * temperature ** 2
    value = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_for_equal_logits_and_scales_with_t_squared():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    other = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    assert kd_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    # Softening logits multiplied by T gives back the unsoftened distributions: only the T^2 factor remains.
    for temperature in (2.0, 5.0):
        scaled = kd_loss(logits * temperature, other * temperature, temperature)
        assert scaled.item() == pytest.approx(temperature ** 2 * kd_loss(logits, other, 1.0).item(), rel=1e-5)


def test_kd_loss_on_dense_outputs_is_per_pixel():
    student, teacher = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    flat = kd_loss(student.permute(0, 2, 3, 1).reshape(-1, 4), teacher.permute(0, 2, 3, 1).reshape(-1, 4), 2.0)
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(flat.item(), rel=1e-6)


# --- schedule --------------------------------------------------------------------------------------

def test_warmup_then_cosine_learning_rates():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = make_scheduler(optimizer, warmup_steps=4, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1 / 5)  # linear warm-up: lr * (s + 1) / (warmup + 1)
    assert lrs[3] == pytest.approx(0.1 * 4 / 5)
    assert lrs[4] == pytest.approx(0.1)  # the peak, where the cosine starts
    assert lrs[7] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lrs[9] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    # A rebuilt optimizer (replace_program) continues at the same position of the schedule.
    rebuilt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    make_scheduler(rebuilt, warmup_steps=4, total_steps=10, start_step=7)
    assert rebuilt.param_groups[0]["lr"] == pytest.approx(lrs[7])


def test_trainer_logs_the_scheduled_learning_rates():
    trainer, _ = _train(_program(), _program(1), _batches(2), steps=6, warmup_steps=2, lr=0.05)
    assert [entry["lr"] for entry in trainer.log] == pytest.approx(
        [0.05 / 3, 0.1 / 3, 0.05, 0.05 * 0.5 * (1 + math.cos(math.pi / 4)), 0.025,
         0.05 * 0.5 * (1 + math.cos(math.pi * 3 / 4))])


# --- training --------------------------------------------------------------------------------------

def _kd_on(student, teacher, data, temperature=4.0):
    with torch.no_grad():
        return sum(kd_loss(student(x), teacher(x), temperature).item() for x, _ in data) / len(data)


def test_distillation_lowers_the_kd_loss():
    teacher = _program(1, width=16)
    with torch.no_grad():  # a confident teacher, so that there is something to learn
        teacher.module.fc.weight.mul_(20)
    student = _program(0, width=8)
    data = _batches(4)
    before = _kd_on(student, teacher, data)
    result = distill(student, config={"data": data, "teacher": teacher, "steps": 60, "optimizer": "adamw",
                                      "lr": 0.01, "warmup_steps": 5, "kd_weight": 1.0, "progress": False,
                                      "eval_data": data[:2], "eval_every": 30})
    after = _kd_on(result.program, teacher, data)
    assert after < 0.3 * before
    assert result.modified and not result.program.training
    assert result.stats["steps"] == 60 and result.stats["kd_loss"] < 0.3 * before
    assert [entry["step"] for entry in result.stats["eval"]] == [30, 60]
    assert result.stats["images_per_second"] > 0
    assert get_pass("distill") is distill


def test_a_diverging_run_stops_before_the_weights_turn_nan():
    teacher, student = _program(1, batch_norm=False), _program(0, batch_norm=False)
    with pytest.raises(TrainingError, match=r"diverged at step \d+: the loss is (nan|inf)"):
        _train(student, teacher, _batches(4), steps=50, lr=1e8, momentum=0.9)
    weights = [p for p in student.module.parameters()]
    assert weights and all(bool(torch.isfinite(p).all()) for p in weights)


def test_a_warm_up_as_long_as_the_run_is_refused_before_any_step():
    """lr 0.1 with a 100-step warm-up over 3 steps trained at lr 0.001 to 0.003, and said nothing."""
    student = _program(0)
    before = {name: tensor.clone() for name, tensor in student.state_dict().items()}
    with pytest.raises(TrainingError, match=r"warmup_steps=100 is not below the run's 3 training steps.*lr=0\.1"):
        _train(student, _program(1), _batches(3), steps=3, lr=0.1, warmup_steps=100)
    assert all(torch.equal(before[name], tensor) for name, tensor in student.state_dict().items())
    _train(_program(0), _program(1), _batches(3), steps=3, lr=0.1, warmup_steps=2)  # shorter than the run: trains


def test_empty_evaluation_data_is_refused_rather_than_reported_as_nan():
    with pytest.raises(TrainingError, match="the evaluation data holds no batches"):
        Trainer(_program(0), teacher=_program(1), data=_batches(2), eval_data=[], config=TrainConfig(steps=2))


def test_the_program_given_as_its_own_teacher_is_frozen_not_trained_along():
    """distill(p, teacher=p): the teacher shared the student's weights and followed it (a KD loss of exactly 0)."""
    data = _batches(3)
    program = _program(0)
    given = {name: tensor.clone() for name, tensor in program.state_dict().items()}
    _, own = _train(program, program, data, steps=6, lr=0.05)
    _, copied = _train(_program(0), _program(0), data, steps=6, lr=0.05)
    assert own["kd_loss"] == copied["kd_loss"] > 0
    assert any(not torch.equal(given[name], tensor) for name, tensor in program.state_dict().items())  # it trained


def test_a_module_teacher_that_writes_into_its_input_leaves_the_batch_to_the_student():
    """An nn.Module teacher runs before the student on the same batch: one that starts with ReLU(inplace=True)
    wrote into the user's images, and the student then trained on what it wrote (the batch left as given, and
    the steps those of a teacher that copies its input first)."""
    class WritesIntoItsInput(nn.Module):
        def __init__(self, inplace: bool):
            super().__init__()
            self.relu, self.net = nn.ReLU(inplace=inplace), SmallNet()

        def forward(self, x):
            return self.net(self.relu(x))

    data = _batches(2)
    given = [images.clone() for images, _ in data]
    torch.manual_seed(0)
    writing = WritesIntoItsInput(inplace=True).eval()
    copying = WritesIntoItsInput(inplace=False).eval()
    copying.load_state_dict(writing.state_dict())
    written, _ = _train(_program(0), writing, data, steps=2, lr=0.05, kd_weight=1.0)
    assert all(torch.equal(images, before) for (images, _), before in zip(data, given))
    copied, _ = _train(_program(0), copying, data, steps=2, lr=0.05, kd_weight=1.0)
    for (name, tensor), other in zip(written.program.state_dict().items(), copied.program.state_dict().values()):
        assert torch.equal(tensor, other), name


def test_a_teacher_program_of_another_batch_size_is_refused_in_words_that_name_it():
    with pytest.raises(TrainingError, match=r"the teacher '.*' takes inputs of shapes \[\(1, 3, 8, 8\)\] and the "
                                            r"student trains on \[\(8, 3, 8, 8\)\]: capture the teacher"):
        _train(_program(0), _program(1, batch=1), _batches(3), steps=2)


class _Tokens(nn.Module):
    """A vision transformer's parameters that are not kernels though of two or more dims: a class token
    concatenated, position embeddings added."""

    def __init__(self):
        super().__init__()
        self.patch, self.head = nn.Conv2d(3, 8, 4, stride=4), nn.Linear(8, CLASSES)
        self.cls_token, self.pos_embed = nn.Parameter(torch.zeros(1, 1, 8)), nn.Parameter(torch.zeros(1, 5, 8))

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1) + self.pos_embed
        return self.head(tokens[:, 0])


def test_weight_decay_reaches_kernels_and_matrices_and_not_tokens_nor_position_embeddings():
    from prunefx.passes.quantize_int8 import quantize_int8
    from prunefx.passes.training.schedule import make_optimizer

    program = capture(_Tokens().eval(), torch.randn(2, 3, 8, 8))
    quantized = quantize_int8(program.clone(), config={"calibration": [torch.randn(2, 3, 8, 8)]}).program
    for each in (program, quantized):  # a fake quantizer between a weight and its convolution
        names = {id(p): name for name, p in each.module.named_parameters()}
        decayed, kept = make_optimizer(each.module, TrainConfig(steps=1, weight_decay=0.1)).param_groups
        assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
        assert sorted(names[id(p)] for p in decayed["params"]) == ["head.weight", "patch.weight"]


class _EpochsSeen(list):
    """Batches that say which epochs they were asked for, as StaticBatches and DistributedSampler are."""

    def __init__(self, batches):
        super().__init__(batches)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_a_second_training_pass_starts_at_the_epoch_after_the_first_one_s():
    """A recipe's training passes (prune_while_training, then distill) each drew the first epoch's order and
    augmentation again; the Program records how far its data went, and saves it."""
    program, data = _program(0), _EpochsSeen(_batches(3))
    distill(program, config={"data": data, "steps": 4, "kd_weight": 0.0, "progress": False})
    assert data.epochs == [0, 1] and program.analysis.training.epochs == 2  # 3 batches, then 1 of the next epoch
    distill(program, config={"data": data, "steps": 3, "kd_weight": 0.0, "progress": False})
    assert data.epochs == [0, 1, 2] and program.analysis.training.epochs == 3


def test_distill_defaults_to_a_frozen_copy_of_the_program_as_teacher():
    program = _program()
    reference = {name: tensor.clone() for name, tensor in program.state_dict().items()}
    result = distill(program, config={"data": _batches(2), "steps": 3, "progress": False})
    assert result.modified
    # The student moved away from the copy it started as, so the KD term is no longer zero.
    assert any(not torch.equal(reference[name], tensor) for name, tensor in result.program.state_dict().items())
    assert result.stats["kd_loss"] > 0


def test_feature_losses_pull_intermediate_tensors_together():
    teacher, student = _program(1), _program(0)
    data = _batches(2)
    trainer, stats = _train(student, teacher, data, steps=40, optimizer="adamw", lr=0.01, kd_weight=0.0,
                            feature_losses={"relu_1": ("relu_1", 10.0)})
    assert stats["feature_loss"] < 0.5 * trainer.log[0]["feature"]


class _EpochLoader:
    """A loader as prunefx.data.splits writes them: a length and set_epoch (which here reverses the order)."""

    def __init__(self, batches):
        self.batches, self.epochs = batches, []

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.batches if self.epochs[-1] % 2 == 0 else self.batches[::-1])


def test_epochs_use_set_epoch_and_an_eager_teacher_keeps_its_mode():
    loader = _EpochLoader(_batches(3))
    torch.manual_seed(1)
    teacher = SmallNet().train()
    trainer, stats = _train(_program(), teacher, loader, epochs=2)
    assert stats["steps"] == 6 and stats["epochs"] == 2
    assert loader.epochs == [0, 1]
    assert teacher.training


def test_evaluate_ignores_padding_labels():
    program = _program()
    images, labels = _batches(1)[0]
    with torch.no_grad():
        predictions = program(images).argmax(1)
    padded = labels.clone()
    padded[-3:] = -1
    result = evaluate(program, [(images, padded)])
    assert result["count"] == BATCH - 3
    assert result["accuracy"] == pytest.approx((predictions[:-3] == labels[:-3]).float().mean().item())


# --- checkpoints -----------------------------------------------------------------------------------

class _Crash(Exception):
    pass


def _crash_at(step):
    def hook(trainer, current):
        if current == step:
            raise _Crash
    return hook


def _checkpointed(directory, **extra):
    # BN in training mode and dropout: the restored running statistics and RNG state both matter.
    return dict(steps=10, lr=0.05, warmup_steps=2, checkpoint_dir=directory, checkpoint_every=4, progress=False,
                feature_losses={"relu_1": ("relu_1", 0.5)}, **extra)


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    data, teacher = _batches(3), _program(1, dropout=0.3)
    _, full_stats = _train(_program(dropout=0.3), teacher, data, **_checkpointed(tmp_path / "full"))
    full = Trainer(_program(dropout=0.3), teacher=teacher, data=data,
                   config=TrainConfig(**_checkpointed(tmp_path / "full", resume=True)))
    full.fit()  # resumes at the last step: nothing left to train

    interrupted = Trainer(_program(dropout=0.3), teacher=teacher, data=data, after_step=[_crash_at(7)],
                          config=TrainConfig(**_checkpointed(tmp_path / "cut")))
    with pytest.raises(_Crash):
        interrupted.fit()
    given = _program(dropout=0.3)  # in eval mode; the resumed run trains the checkpoint's program instead
    resumed = Trainer(given, teacher=teacher, data=data,
                      config=TrainConfig(**_checkpointed(tmp_path / "cut", resume=True)))
    stats = resumed.fit()
    assert stats["resumed_from"] == 4 and stats["steps_run"] == 6
    # the console's and report.md's line counts every step the model took, and says where this run began
    assert "10 training steps (6 in this run, resumed at step 4)," in pass_summary(stats)
    assert pass_summary(full_stats).startswith("10 training steps, loss")
    assert resumed.program is not given and not given.training  # the caller's program given back as it came
    # the checkpoint's program runs on the caller's example inputs (a loaded one draws random ones)
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(resumed.program.example_inputs, given.example_inputs))
    for (name, expected), (_, actual) in zip(full.program.state_dict().items(), resumed.program.state_dict().items()):
        assert torch.equal(expected, actual), name
    assert [e["loss"] for e in resumed.log] == [e["loss"] for e in full.log]
    assert stats["train_loss"] == full_stats["train_loss"]


class _Flipped(torch.utils.data.Dataset):
    """Images flipped at random as they are read: augmentation drawing from torch's generator, as transforms do."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        return (image.flip(-1) if torch.rand(()) < 0.5 else image), self.labels[index]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_on_a_shuffling_loader_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path, workers):
    """A DataLoader draws its order and its workers' seeds from torch's generator when it is iterated: resumed
    mid-epoch, the epoch is drawn again from the state its start drew from, the trained batches skipped."""
    images, labels = (torch.cat(part) for part in zip(*_batches(3)))  # 3 batches an epoch

    def loader():
        return torch.utils.data.DataLoader(_Flipped(images, labels), batch_size=BATCH, shuffle=True,
                                           num_workers=workers, drop_last=True)

    teacher, settings = _program(1, dropout=0.3), dict(_checkpointed(tmp_path / "full"), steps=10)
    full, _ = _train(_program(dropout=0.3), teacher, loader(), **settings)
    cut = Trainer(_program(dropout=0.3), teacher=teacher, data=loader(), after_step=[_crash_at(6)],
                  config=TrainConfig(**{**settings, "checkpoint_dir": tmp_path / "cut"}))
    with pytest.raises(_Crash):
        cut.fit()  # its checkpoint at step 4: one batch into the second epoch
    resumed = Trainer(_program(dropout=0.3), teacher=teacher, data=loader(),
                      config=TrainConfig(**{**settings, "checkpoint_dir": tmp_path / "cut", "resume": True}))
    assert resumed.fit()["resumed_from"] == 4
    assert [e["loss"] for e in resumed.log] == [e["loss"] for e in full.log]
    for (name, expected), (_, actual) in zip(full.program.state_dict().items(), resumed.program.state_dict().items()):
        assert torch.equal(expected, actual), name


def test_the_distill_pass_resumed_inside_a_pipeline_returns_the_program_it_was_given(tmp_path):
    """Recipes and `compress` run distill in a Pipeline, which holds an in-place pass to returning the Program it
    was given; a resumed run trains the checkpoint's program, which that Program takes on."""
    from prunefx.passes.core.pipeline import Pipeline
    data, teacher = _batches(3), _program(1, dropout=0.3)
    config = dict(data=data, teacher=teacher, **_checkpointed(tmp_path / "cut"))
    with pytest.raises(_Crash):
        distill(_program(dropout=0.3), config=dict(config, after_step=[_crash_at(7)]))
    resumed = Pipeline([(distill, dict(config, resume=True))]).run(_program(dropout=0.3))
    whole = distill(_program(dropout=0.3), config=dict(config, checkpoint_dir=tmp_path / "whole"))
    assert resumed.stats()["distill"]["resumed_from"] == 4
    for (name, expected), (_, actual) in zip(whole.program.state_dict().items(), resumed.program.state_dict().items()):
        assert torch.equal(expected, actual), name


def _callers_draws() -> tuple:
    return torch.rand(3), random.random(), np.random.rand()


def _seed_caller(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def test_a_run_draws_from_its_own_seed_and_leaves_the_callers_random_state_as_found(tmp_path):
    """Dropout draws from torch's generator; a resumed run also sets Python's and numpy's from its checkpoint.
    The oracle for the caller's state is the draws it makes with no training in between."""
    programs, data = [_program(dropout=0.5) for _ in range(3)], _batches(3)
    settings = dict(steps=6, lr=0.05, kd_weight=0.0, checkpoint_dir=tmp_path, checkpoint_every=3)
    _seed_caller(7)
    expected = _callers_draws()
    runs = []
    for program, caller_seed in zip(programs[:2], (7, 8)):  # the caller's state differs, the run's seed does not
        _seed_caller(caller_seed)
        runs.append(_train(program, None, data, **settings)[0])
        if caller_seed == 7:
            assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(_callers_draws(), expected))
    for (name, first), (_, second) in zip(runs[0].program.state_dict().items(), runs[1].program.state_dict().items()):
        assert torch.equal(first, second), name
    _seed_caller(7)
    _train(programs[2], None, data, **settings, resume=True)  # at its last checkpoint: sets every state, trains none
    assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(_callers_draws(), expected))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_a_run_on_a_gpu_draws_from_its_own_seed_and_leaves_the_callers_cuda_state_as_found():
    programs, data, trained = [_program(dropout=0.5) for _ in range(2)], _batches(2), []
    for program, caller_seed in zip(programs, (7, 8)):
        torch.cuda.manual_seed(caller_seed)
        before = torch.cuda.get_rng_state(), torch.get_rng_state()
        trained.append(_train(program, None, data, steps=3, lr=0.05, kd_weight=0.0, device="cuda")[0])
        assert all(torch.equal(now, then) for now, then in zip((torch.cuda.get_rng_state(), torch.get_rng_state()),
                                                                before))
    # cuDNN's weight gradients add with atomics: equal draws give equal weights to rounding, not bit for bit
    # (another seed's dropout masks move them by far more)
    for (name, first), (_, second) in zip(*(run.program.state_dict().items() for run in trained)):
        assert torch.allclose(first.float(), second.float(), rtol=1e-4, atol=1e-6), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_a_run_on_a_gpu_resumed_from_its_checkpoint_matches_the_uninterrupted_one(tmp_path):
    """The checkpoint of a cuda run (written on the CPU, whatever the device) resumes on cuda: its identity (the
    given weights' norms, computed on the GPU) is accepted, the CUDA generator is restored, and the weights equal
    the uninterrupted run's to cuDNN's rounding; a run given other weights is refused."""
    data, teacher = _batches(3), _program(1, dropout=0.3)
    settings = dict(_checkpointed(tmp_path / "full"), device="cuda")
    full, _ = _train(_program(dropout=0.3), teacher, data, **settings)
    interrupted = Trainer(_program(dropout=0.3), teacher=teacher, data=data, after_step=[_crash_at(7)],
                          config=TrainConfig(**dict(settings, checkpoint_dir=tmp_path / "cut")))
    with pytest.raises(_Crash):
        interrupted.fit()
    resumed = Trainer(_program(dropout=0.3), teacher=teacher, data=data,
                      config=TrainConfig(**dict(settings, checkpoint_dir=tmp_path / "cut", resume=True)))
    assert resumed.fit()["resumed_from"] == 4
    for (name, expected), (_, actual) in zip(full.program.state_dict().items(), resumed.program.state_dict().items()):
        assert torch.allclose(expected.float(), actual.float(), rtol=1e-4, atol=1e-6), name
    other = Trainer(_program(seed=3, dropout=0.3), teacher=teacher, data=data,
                    config=TrainConfig(**dict(settings, checkpoint_dir=tmp_path / "cut", resume=True)))
    with pytest.raises(TrainingError, match="other weights"):
        other.fit()


def test_only_a_process_of_torchrun_has_its_gpu_made_current_for_good(monkeypatch):
    """One process names its GPU wherever it places tensors and makes it current only during `fit`; a process
    of torchrun owns the GPU of its LOCAL_RANK, which NCCL reads as the current device."""
    made_current = []
    monkeypatch.setattr(training_processes, "device_named", torch.device)  # a machine with two GPUs, as far as it asks
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device(TrainConfig(steps=1, device="cuda:1"), nn.Linear(2, 2)) == torch.device("cuda", 1)
    assert made_current == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device(TrainConfig(steps=1, device="cuda:0"), nn.Linear(2, 2)) == torch.device("cuda", 1)
    assert made_current == [torch.device("cuda", 1)]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two NVIDIA GPUs with CUDA")
def test_a_run_on_a_second_gpu_computes_there_and_leaves_the_current_device_as_found():
    program, seen = _program(), []
    program.module.register_forward_pre_hook(lambda module, args: seen.append(torch.cuda.current_device()))
    found = torch.cuda.current_device()
    _train(program, None, _batches(2), steps=2, lr=0.05, kd_weight=0.0, device="cuda:1")
    assert seen and set(seen) == {1} and torch.cuda.current_device() == found == 0


def test_a_process_group_a_trainer_made_ends_with_its_run_refused_stopped_or_done(monkeypatch):
    """Under torchrun a Trainer that found no process group makes one: it ends with the run, also when the run is
    refused while it is set up or stopped by an error, so that a script that catches the error and retries starts
    a group of its own (stood in for: the world is one process, the group's end is recorded)."""
    import prunefx.passes.training.engine as engine_module

    ended = []
    monkeypatch.setattr(engine_module, "distributed_world", lambda device: (0, 1, True))
    monkeypatch.setattr(engine_module, "leave_process_group", lambda: ended.append(True))
    settings = dict(steps=3, lr=0.01, kd_weight=0.0, progress=False)
    refused = {**settings, "steps": None, "epochs": 1, "warmup_steps": 5}  # 2 steps: known once the data is
    with pytest.raises(TrainingError, match="warmup_steps"):
        Trainer(_program(), teacher=None, data=_batches(2), config=TrainConfig(**refused))
    assert ended == [True]
    stopped = Trainer(_program(), teacher=None, data=_batches(2), after_step=[_crash_at(1)],
                      config=TrainConfig(**settings))
    with pytest.raises(_Crash):
        stopped.fit()
    assert ended == [True, True]
    _train(_program(), None, _batches(2), **settings)
    assert ended == [True, True, True]


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path):
    data, teacher = _batches(2), _program(1)
    _train(_program(), teacher, data, **_checkpointed(tmp_path))

    def resume(**changes):
        config = {**_checkpointed(tmp_path, resume=True), **changes}
        return Trainer(_program(), teacher=teacher, data=data, config=TrainConfig(**config)).fit()

    with pytest.raises(TrainingError, match="total_steps=10"):
        resume(steps=12)
    with pytest.raises(TrainingError, match="optimizer_kind=sgd"):
        resume(optimizer="adamw")
    other = tmp_path / "other"
    _train(_program(), teacher, data, **{**_checkpointed(other), "steps": 4})
    (tmp_path / PROGRAM_FILE).write_bytes((other / PROGRAM_FILE).read_bytes())
    with pytest.raises(TrainingError, match="different saves"):
        resume()
    (tmp_path / STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="cannot read .*trainer_state.pt"):
        resume()
    torch.save({"format": 1}, tmp_path / STATE_FILE)  # another tool's file of the right format number
    with pytest.raises(TrainingError, match="not a whole prunefx trainer state .*program_sha256"):
        resume()
    (tmp_path / STATE_FILE).unlink()
    with pytest.raises(TrainingError, match="incomplete checkpoint"):
        resume()


def test_a_checkpoint_of_another_run_is_refused_and_the_same_run_resumes(tmp_path):
    """A checkpoint belongs to one run: resumed under another learning rate, distillation, seed, or for another
    model or the same model with other weights, it is refused with what differs (it used to finish "resumed"
    with the checkpoint's weights under the new settings' name); the same run resumes."""
    data, teacher = _batches(2), _program(1)
    _train(_program(), teacher, data, **_checkpointed(tmp_path))

    def resume(program=None, by=None, **changes):
        config = {**_checkpointed(tmp_path, resume=True), **changes}
        return Trainer(program or _program(), teacher=by or teacher, data=data, config=TrainConfig(**config)).fit()

    for change, said in [({"lr": 0.2}, "lr=0.05"), ({"kd_weight": 0.1}, "kd_weight=0.9"), ({"seed": 5}, "seed=0"),
                         ({"feature_losses": {}}, "feature_losses=")]:
        with pytest.raises(TrainingError, match=said):
            resume(**change)
    with pytest.raises(TrainingError, match="for another model"):
        resume(_program(width=16))
    with pytest.raises(TrainingError, match="with other weights"):
        resume(_program(3))
    # the teacher is part of the run: another one (its norms differ) was taken without a word
    with pytest.raises(TrainingError, match="for the same teacher with other weights"):
        resume(by=_program(2))
    assert resume()["resumed_from"] == 10


def test_an_interrupt_says_how_to_go_on_only_where_a_checkpoint_was_written(tmp_path):
    data = _batches(2)
    for every, said in [(4, "run the same command with `resume: true`"), (0, "no training checkpoint was written")]:
        folder = tmp_path / str(every)

        def interrupt_at_step_5(trainer, current):
            if current == 5:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt) as caught:
            Trainer(_program(), teacher=None, data=data, after_step=[interrupt_at_step_5],
                    config=TrainConfig(**{**_checkpointed(folder), "checkpoint_every": every, "kd_weight": 0.0,
                                          "feature_losses": {}})).fit()
        assert said in " ".join(caught.value.__notes__)


def _checkpoint_files(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_save_stopped_before_its_program_is_replaced_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """Interrupted while the second checkpoint is written: the first stands, resumable, with no partial files."""
    checkpoint = importlib.import_module("prunefx.passes.training.checkpoint")
    data, teacher = _batches(2), _program(1)
    real_replace = checkpoint.os.replace

    def stopped_at_the_second_save(source, target):
        if str(target).endswith(PROGRAM_FILE) and (tmp_path / PROGRAM_FILE).exists():
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", stopped_at_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        _train(_program(), teacher, data, **_checkpointed(tmp_path))
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert _checkpoint_files(tmp_path) == [PROGRAM_FILE, STATE_FILE]
    _, stats = _train(_program(), teacher, data, **_checkpointed(tmp_path, resume=True))
    assert stats["resumed_from"] == 4


class _Killed(BaseException):
    """A process killed outright: no handler of the save runs, and it renames nothing more."""


def _killed_after_program_replace(tmp_path, monkeypatch, saves: int) -> None:
    """Train with checkpoints, the process killed right after the `saves`-th save replaced its program."""
    checkpoint = importlib.import_module("prunefx.passes.training.checkpoint")
    real_replace, seen = checkpoint.os.replace, []

    def killed(source, target):
        result = real_replace(source, target)
        seen.append(Path(target).name)
        if seen.count(PROGRAM_FILE) == saves:
            monkeypatch.setattr(checkpoint.os, "replace", lambda *_: None)
            raise _Killed
        return result

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(_Killed):
        _train(_program(), _program(1), _batches(2), **_checkpointed(tmp_path))
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)


@pytest.mark.parametrize("saves, left, resumed_from", [
    (2, [PROGRAM_FILE, "trainer_state.partial.pt", STATE_FILE], 8),
    (1, [PROGRAM_FILE, "trainer_state.partial.pt"], 4),  # the first save: no earlier state beside it
])
def test_a_save_killed_between_its_two_replaces_is_finished_on_resume(tmp_path, monkeypatch, saves, left,
                                                                      resumed_from):
    """Killed after the program was replaced: the new program and the state beside it under its partial name are
    a pair, and resume finishes that save rather than refusing the directory."""
    _killed_after_program_replace(tmp_path, monkeypatch, saves)
    assert _checkpoint_files(tmp_path) == left
    _, stats = _train(_program(), _program(1), _batches(2), **_checkpointed(tmp_path, resume=True))
    assert stats["resumed_from"] == resumed_from and _checkpoint_files(tmp_path) == [PROGRAM_FILE, STATE_FILE]


def test_a_save_that_fails_after_a_killed_one_keeps_the_state_that_save_left(tmp_path, monkeypatch):
    """A killed save left its program and, under the partial name, its state; the next save fails (a full disk
    while writing the state). The pair the killed save left still resumes: the failed save's cleanup removed only
    files of its own."""
    checkpoint = importlib.import_module("prunefx.passes.training.checkpoint")
    _killed_after_program_replace(tmp_path, monkeypatch, 2)

    real_save = checkpoint.torch.save

    def disk_full(value, target, *args, **kwargs):  # the program is written; its state is not
        if "trainer_state" in str(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(value, target, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        checkpoint.write_checkpoint(tmp_path, _program(), {"step": 9})
    monkeypatch.undo()
    _, stats = _train(_program(), _program(1), _batches(2), **_checkpointed(tmp_path, resume=True))
    assert stats["resumed_from"] == 8 and _checkpoint_files(tmp_path) == [PROGRAM_FILE, STATE_FILE]


def test_a_save_reaches_the_disk_before_its_commit_and_the_commit_after_it(tmp_path, monkeypatch):
    """A power cut keeps one whole pair: both partial files are synced before the program is replaced, and the
    folder after the state is."""
    checkpoint = importlib.import_module("prunefx.passes.training.checkpoint")
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(descriptor):
        events.append(("sync", Path(os.readlink(f"/proc/self/fd/{descriptor}")).name))
        return real_fsync(descriptor)

    def replace(source, target):
        events.append(("replace", Path(target).name))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint.write_checkpoint(tmp_path, _program(), {"step": 1})
    commit = events.index(("replace", PROGRAM_FILE))
    synced = {name for kind, name in events[:commit] if kind == "sync"}
    assert any(name.startswith(".program.partial.pt2.") for name in synced)
    assert any(name.startswith(".trainer_state.partial.pt.") for name in synced)
    assert events[commit + 1] == ("replace", STATE_FILE) and events[commit + 2:] == [("sync", tmp_path.name)]


# --- hooks -----------------------------------------------------------------------------------------

def test_hooks_see_gradients_and_replace_program_continues_with_new_parameters():
    data = _batches(2)
    gradient_norms, replaced = [], {}

    def read_gradients(trainer):
        gradient_norms.append(sum(p.grad.norm().item() for p in trainer.program.parameters()))

    def prune_at_step_3(trainer, step):
        if step == 3:
            pruned = remove_channels(trainer.program.clone(), config={"channels": 0.5, "round_to": 1}).program
            replaced["weights"] = {n: t.clone() for n, t in pruned.state_dict().items()}
            trainer.replace_program(pruned)
            replaced["program"] = pruned

    trainer = Trainer(_program(), teacher=_program(1), data=data, after_backward=[read_gradients],
                      after_step=[prune_at_step_3],
                      config=TrainConfig(steps=8, lr=0.05, warmup_steps=2, progress=False))
    stats = trainer.fit()
    assert len(gradient_norms) == 8 and all(norm > 0 for norm in gradient_norms)
    new = replaced["program"]
    assert trainer.program is new
    assert new.module.conv1.weight.shape[0] < 8
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in new.parameters()}
    assert any(not torch.equal(replaced["weights"][n], t) for n, t in new.state_dict().items())
    assert trainer.log[3]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 1 / 6)))
    assert math.isfinite(stats["train_loss"])


def test_resume_after_a_structural_change_continues_with_the_pruned_program(tmp_path):
    data, teacher = _batches(2), _program(1)

    def prune_at_step_3(trainer, step):
        if step == 3:
            trainer.replace_program(remove_channels(trainer.program.clone(),
                                                    config={"channels": 0.5, "round_to": 1}).program)

    def run(directory, hooks, resume=False):
        trainer = Trainer(_program(), teacher=teacher, data=data, after_step=hooks,
                          config=TrainConfig(steps=8, lr=0.05, checkpoint_dir=directory, checkpoint_every=4,
                                             resume=resume, progress=False))
        trainer.fit()
        return trainer

    full = run(tmp_path / "full", [prune_at_step_3])
    with pytest.raises(_Crash):
        run(tmp_path / "cut", [prune_at_step_3, _crash_at(6)])
    resumed = run(tmp_path / "cut", [prune_at_step_3], resume=True)
    assert resumed.program.module.conv1.weight.shape[0] < 8
    for (name, expected), (_, actual) in zip(full.program.state_dict().items(), resumed.program.state_dict().items()):
        assert torch.equal(expected, actual), name


# --- configuration errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({}, "exactly one of 'steps' and 'epochs'"),
    ({"steps": 5, "epochs": 1}, "exactly one of 'steps' and 'epochs'"),
    ({"steps": 0}, "'steps' must be at least 1"),
    ({"steps": 2.5}, "'steps' must be an integer"),
    ({"steps": 5, "optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
    ({"steps": 5, "lr": 0}, r"'lr' must lie in \(0, inf\)"),
    ({"steps": 5, "kd_weight": 1.5}, r"'kd_weight' must lie in \[0, 1\]"),
    ({"steps": 5, "temperature": -1}, "'temperature' must lie in"),
    ({"steps": 5, "momentum": 1.0}, "'momentum' must lie in"),
    ({"steps": 5, "max_grad_norm": float("nan")}, "'max_grad_norm' must be a finite number"),
    ({"steps": 5, "resume": True}, "need a 'checkpoint_dir'"),
    ({"steps": 5, "resume": "yes", "checkpoint_dir": "x"}, "'resume' must be true or false"),
    ({"steps": 5, "feature_losses": {"relu": 3}}, r"feature_losses\['relu'\]"),
    ({"steps": 5, "learning_rate": 0.1}, r"unknown option\(s\) \['learning_rate'\]"),
])
def test_bad_configs_are_refused(options, message):
    with pytest.raises(TrainingError, match=message):
        TrainConfig.from_dict(options)


def test_bad_inputs_are_refused():
    program, teacher = _program(), _program(1)
    with pytest.raises(TrainingError, match="distill needs 'data'"):
        distill(program, config={"steps": 2})
    with pytest.raises(TrainingError, match="static input shapes"):
        _train(program, teacher, _batches(1, batch=4), steps=1)
    with pytest.raises(TrainingError, match="no node named 'nope'"):
        _train(program, teacher, _batches(1), steps=1, feature_losses={"nope": "relu"})
    with pytest.raises(TrainingError, match="'epochs' needs data with a length"):
        _train(program, teacher, iter(_batches(1)), epochs=1)
    with pytest.raises(TrainingError, match="yielded no batches"):
        _train(program, teacher, iter(_batches(1)), steps=3)


def _labelled(labels: torch.Tensor) -> list:
    return [(torch.randn(BATCH, 3, 8, 8), labels)]


def test_class_indices_of_any_integer_type_train_and_evaluate():
    # int32 labels (a numpy-made loader's) failed inside cross-entropy: "expected target dtype to be Long"
    program, teacher = _program(), _program(1)
    data = [(images, labels.to(torch.int32)) for images, labels in _batches(2)]
    _train(program, teacher, data, steps=2)
    assert evaluate(program, data)["count"] == 2 * BATCH


class _AlsoANumber(nn.Module):
    """Logits and the batch size: its output's spec holds a leaf that no tensor shape stands for."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, CLASSES)

    def forward(self, x):
        return self.linear(x.flatten(1)), x.shape[0]


def test_labels_are_checked_on_a_model_that_also_returns_a_number():
    # the check rebuilt the outputs from their shapes before the forward: a ValueError at the first step
    program = capture(_AlsoANumber().eval(), torch.randn(BATCH, 3, 8, 8))
    _train(program, None, _batches(2), steps=2, kd_weight=0.0)
    with pytest.raises(TrainingError, match="labels must lie in"):
        _train(program, None, _labelled(torch.full((BATCH,), CLASSES)), steps=1, kd_weight=0.0)


@pytest.mark.parametrize("labels, said", [
    (torch.full((BATCH,), CLASSES), f"labels must lie in \\[0, {CLASSES - 1}\\].*from {CLASSES} to {CLASSES}"),
    (torch.full((BATCH,), -2), "labels must lie in"),
    (torch.zeros(BATCH), "labels must be class indices .* not float32"),
    (torch.zeros(BATCH - 1, dtype=torch.long), "do not go with logits"),
])
def test_labels_the_logits_cannot_score_are_refused_in_training_and_evaluation(labels, said):
    # an IndexError from inside cross-entropy before, and on a GPU a device-side assert
    program, teacher = _program(), _program(1)
    before = {name: value.clone() for name, value in program.state_dict().items()}
    with pytest.raises(TrainingError, match=said):
        _train(program, teacher, _labelled(labels), steps=1)
    assert all(torch.equal(value, before[name]) for name, value in program.state_dict().items())
    with pytest.raises(TrainingError, match=said):
        evaluate(program, _labelled(labels))


# --- distributed -----------------------------------------------------------------------------------

def _ddp_config(directory) -> dict:
    return dict(steps=6, lr=0.05, warmup_steps=2, max_grad_norm=1.0, progress=False, eval_every=3,
                checkpoint_dir=directory, checkpoint_every=3, feature_losses={"relu_1": ("relu_1", 0.5)})


def _ddp_run(batch: int, directory):
    # No batch norm: in training mode each rank would normalise with its own half-batch statistics,
    # which differ by design from the full batch's, so DDP could not match single-process training.
    student = _program(0, batch=batch, batch_norm=False)
    teacher = _program(1, batch=batch, batch_norm=False)
    trainer = Trainer(student, teacher=teacher, data=_batches(3, batch=2 * 4), eval_data=_batches(2, batch=8, seed=5),
                      config=TrainConfig(**_ddp_config(directory)))
    return trainer, trainer.fit()


def ddp_worker(directory: str) -> None:
    """Run by each of the two processes the DDP test starts (the environment says rank and world size)."""
    torch.set_num_threads(1)
    trainer, stats = _ddp_run(4, Path(directory) / "checkpoint")
    if trainer.rank == 0:
        torch.save({"state": trainer.program.state_dict(), "stats": stats, "log": trainer.log},
                   Path(directory) / "ddp.pt")


_WORKER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("distill_ddp_worker", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.ddp_worker(sys.argv[2])
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process_training(tmp_path):
    port = _free_port()
    processes = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, "-c", _WORKER, __file__, str(tmp_path)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [process.communicate(timeout=180)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    single, stats = _ddp_run(8, tmp_path / "single")
    assert ddp["stats"]["world_size"] == 2 and stats["world_size"] == 1
    for name, tensor in single.program.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert [e["loss"] for e in ddp["log"]] == pytest.approx([e["loss"] for e in single.log], rel=1e-4)
    # Evaluation counts the items of both ranks.
    assert [e["count"] for e in ddp["stats"]["eval"]] == [e["count"] for e in stats["eval"]] == [16, 16]
    assert [e["accuracy"] for e in ddp["stats"]["eval"]] == [e["accuracy"] for e in stats["eval"]]
    assert (tmp_path / "checkpoint" / PROGRAM_FILE).is_file() and (tmp_path / "checkpoint" / STATE_FILE).is_file()


def test_an_interrupted_checkpointed_run_says_how_to_resume(tmp_path):
    def ctrl_c_at_step_6(trainer, step):
        if step == 6:
            raise KeyboardInterrupt

    trainer = Trainer(_program(), teacher=_program(1), data=_batches(2), after_step=[ctrl_c_at_step_6],
                      config=TrainConfig(**_checkpointed(tmp_path / "ckpt")))
    with pytest.raises(KeyboardInterrupt) as caught:
        trainer.fit()
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert str(tmp_path / "ckpt") in notes and "resume: true" in notes
    resumed = Trainer(_program(), teacher=_program(1), data=_batches(2),
                      config=TrainConfig(**_checkpointed(tmp_path / "ckpt", resume=True)))
    assert resumed.fit()["resumed_from"] == 4  # the note is true: the run goes on from the last checkpoint


def _module_teacher() -> nn.Module:
    torch.manual_seed(3)
    teacher = SmallNet().train()
    teacher.norm.eval()  # a batch norm frozen in a model left in training mode
    return teacher


def _modes_and_gradients(model: nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_a_module_teacher_is_left_as_found_by_a_run_and_by_a_refusal(one_thread):
    """The caller's nn.Module teacher keeps every submodule's mode (a frozen batch norm stays frozen, the rest
    keep training) after a distillation, and after prune_while_training refuses its schedule before training;
    the student still learns from the teacher's eval-mode outputs (the oracle: a teacher in eval mode)."""
    teacher = _module_teacher()
    before = _modes_and_gradients(teacher)
    weights = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    data = _batches(2)
    trained, _ = _train(_program(), teacher, data, steps=2, lr=0.05, kd_weight=1.0)
    assert _modes_and_gradients(teacher) == before
    assert all(torch.equal(weights[name], tensor) for name, tensor in teacher.state_dict().items())
    in_eval = _module_teacher().eval()
    same, _ = _train(_program(), in_eval, data, steps=2, lr=0.05, kd_weight=1.0)
    for (name, first), (_, second) in zip(trained.program.state_dict().items(), same.program.state_dict().items()):
        assert torch.equal(first, second), name

    with pytest.raises(Exception, match="cannot hold"):
        get_pass("prune_while_training")(_program(), config={"data": data, "teacher": teacher, "macs": 0.5,
                                                             "steps": 2, "prune_events": 2, "interval": 5,
                                                             "progress": False})
    assert _modes_and_gradients(teacher) == before


def _moves_to_new_buffers(monkeypatch) -> None:
    """The trainer's moves give the program new buffer objects, as a move to another device does (Module.to
    makes new buffers there; parameters keep their objects): a CPU stand-in for a cuda run."""
    from prunefx.passes.training import placement

    def move_program(program, device):
        placement_move(program, device)
        for module in program.module.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = buffer.clone()
        return program

    placement_move = placement.move_program
    monkeypatch.setattr(placement, "move_program", move_program)


def test_a_second_fit_on_another_device_trains_the_program_s_own_buffers(one_thread, monkeypatch):
    """After a fit gave the program back (moved home) and a second took it again (moved to the device), the
    batch norm's running statistics that the second fit gathers are the program's: the oracle is the program's
    own buffer, which must change over the second fit's steps."""
    _moves_to_new_buffers(monkeypatch)
    program = _program().eval()
    trainer = Trainer(program, teacher=None, data=_batches(2),
                      config=TrainConfig(steps=2, lr=0.05, kd_weight=0.0, progress=False))
    trainer.fit()
    after_first = program.module.state_dict()
    trainer.total_steps = 4
    trainer.fit()
    means = [name for name in after_first if name.endswith("running_mean")]
    assert means and all(not torch.equal(after_first[name], program.module.state_dict()[name]) for name in means)
    assert program.example_inputs[0].device == next(program.module.parameters()).device


def test_a_second_fit_trains_in_training_mode_and_a_refused_schedule_gives_the_program_back(one_thread):
    """fit gives the program back in its own modes; a second fit takes it again (it trained in eval mode, its
    dropout off and its batch norms frozen); prune_while_training refusing its schedule leaves it as found."""
    program = _program(dropout=0.3).eval()
    seen = []
    trainer = Trainer(program, teacher=None, data=_batches(2),
                      config=TrainConfig(steps=2, lr=0.05, kd_weight=0.0, progress=False),
                      after_step=[lambda trainer, step: seen.append(trainer.program.training)])
    trainer.fit()
    assert not program.training
    trainer.total_steps = 4
    trainer.fit()
    assert seen == [True] * 4 and not program.training

    program = _program()
    assert not program.training
    with pytest.raises(Exception, match="cannot hold"):
        get_pass("prune_while_training")(program, config={"data": _batches(2), "macs": 0.5, "steps": 2,
                                                          "prune_events": 2, "interval": 5, "progress": False})
    assert not program.training


def _bfloat16_program(seed: int = 0):
    torch.manual_seed(seed)
    return capture(SmallNet().eval().bfloat16(), torch.randn(BATCH, 3, 8, 8, dtype=torch.bfloat16)).eval()


def test_a_bfloat16_program_trains_and_scores_on_float32_batches_as_on_the_same_batches_in_bfloat16():
    """Data sets give float32 images; a Program captured in bfloat16 takes its own dtype (the oracle: the same
    batches cast by hand before they are given). A float32 teacher takes the batch in its own."""
    batches = _batches(3)
    by_hand = [(x.bfloat16(), y) for x, y in batches]
    assert evaluate(_bfloat16_program(), batches) == evaluate(_bfloat16_program(), by_hand)
    trained = [distill(_bfloat16_program(), config={"data": data, "steps": 3, "progress": False, "seed": 0}).program
               for data in (batches, by_hand)]
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(*(p.state_dict().values() for p in trained)))
    assert all(p.dtype == torch.bfloat16 for p in trained[0].parameters())
    teacher = _program(1)
    result = distill(_bfloat16_program(), config={"data": batches, "teacher": teacher, "steps": 2, "progress": False})
    assert result.stats["kd_loss"] > 0


def test_only_floating_inputs_take_the_program_dtype():
    from prunefx.graph.input_batches import as_program_inputs

    examples = (torch.zeros(2, dtype=torch.float16), torch.zeros(2, dtype=torch.int64))
    given = (torch.ones(2), torch.ones(2, dtype=torch.int32), torch.ones(2, dtype=torch.float64))
    assert [t.dtype for t in as_program_inputs(given, examples, "cpu")] == [torch.float16, torch.int32, torch.float64]


def test_the_training_line_names_the_trainers_top_1_as_what_it_is():
    # a segmenter's is per pixel, beside the report's mIoU: a bare 'val 2.75 %' read as another metric's figure
    stats = {"steps_run": 10, "train_loss": 1.0, "task_loss": 1.0, "kd_loss": 0.5, "seconds": 3.0,
             "eval": [{"accuracy": 0.0275, "loss": 1.0, "count": 64}]}
    assert pass_summary(stats) == "10 training steps, loss 1.0000 (task 1.0000, KD 0.5000), val top-1 2.75 %, 3 s"


def test_a_checkpoint_of_more_gpus_resumes_on_fewer_with_the_states_of_the_gpus_there(monkeypatch):
    """A checkpoint holds every GPU's random state; resumed where fewer are visible (another node,
    CUDA_VISIBLE_DEVICES), set_rng_state_all indexed past the last one. Here two states, one GPU (faked)."""
    from prunefx.passes.training.random_state import rng_state, set_rng_state

    given = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: given.update(enumerate(states)))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": given.update({device: state}))
    first, second = torch.zeros(8, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)
    set_rng_state({**rng_state(), "cuda": [first, second]})
    assert list(given) == [0] and given[0] is first
