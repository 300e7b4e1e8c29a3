"""prunefx.interop.recovery: CPD's schedule and the KD loss called from a plain PyTorch loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunefx.graph import PrunefxError, capture
from prunefx.interop.recovery import DistillationLoss, PruneWhileTraining
from prunefx.passes.prune_while_training import prune_while_training
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.training.carried_state import carry_optimizer, cut_tracking_indices
from prunefx.passes.training.schedule import lr_factor


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 5, (4,), generator=generator)


def random_cut(program) -> None:
    # Random scores ignore the weights, so the same plan is drawn whatever values the tensors hold.
    remove_channels(program, config={"macs": 0.5, "importance": "random", "seed": 3, "round_to": 4})


def test_cut_tracking_indices_matches_a_plain_cut():
    program = capture(tiny_net().eval(), batch()[0])
    expected = program.clone()
    random_cut(expected)
    pruned, kept = cut_tracking_indices(program, random_cut)
    want = dict(expected.module.named_parameters()) | dict(expected.module.named_buffers())
    got = dict(pruned.module.named_parameters()) | dict(pruned.module.named_buffers())
    assert want.keys() == got.keys()
    assert any(got[name].shape != tensor.shape for name, tensor in program.module.named_parameters())
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert torch.equal(expected(batch(1)[0]), pruned(batch(1)[0]))
    assert program.module.get_parameter("0.weight").shape[0] == 16  # the original is left as it was


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.AdamW])
def test_optimizer_state_follows_the_surviving_channels(optimizer_class):
    program = capture(tiny_net().eval(), batch()[0])
    before = dict(program.module.named_parameters())
    optimizer = optimizer_class([{"params": [p for p in before.values() if p.dim() > 1], "lr": 0.1},
                                 {"params": [p for p in before.values() if p.dim() <= 1], "lr": 0.2}])
    # Oracle: a state equal to the parameter itself must come out equal to the new parameter.
    for parameter in before.values():
        optimizer.state[parameter] = {"momentum_buffer": parameter.detach().clone(), "step": torch.tensor(7.0)}
    pruned, kept = cut_tracking_indices(program, random_cut)
    after = dict(pruned.module.named_parameters())
    carry_optimizer(optimizer, before, after, kept)
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.2]
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in after.values()}
    for parameter in after.values():
        state = optimizer.state[parameter]
        assert torch.equal(state["momentum_buffer"], parameter.detach())
        assert float(state["step"]) == 7.0


def test_an_optimizer_whose_carry_fails_half_way_is_left_as_it_was(monkeypatch):
    from prunefx.passes.training import carried_state

    program = capture(tiny_net().eval(), batch()[0])
    before = dict(program.module.named_parameters())
    optimizer = torch.optim.SGD(before.values(), lr=0.1, momentum=0.9)
    for parameter in before.values():
        optimizer.state[parameter] = {"momentum_buffer": parameter.detach().clone()}
    found = ([list(group["params"]) for group in optimizer.param_groups], dict(optimizer.state))
    pruned, kept = cut_tracking_indices(program, random_cut)
    sliced, calls = carried_state._sliced_state, []

    def interrupted(*args):  # Ctrl-C on the third parameter
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return sliced(*args)

    monkeypatch.setattr(carried_state, "_sliced_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        carry_optimizer(optimizer, before, dict(pruned.module.named_parameters()), kept)
    assert [list(group["params"]) for group in optimizer.param_groups] == found[0]
    assert dict(optimizer.state) == found[1]


def test_kd_loss_is_the_trainers_formula():
    student, teacher = tiny_net(), tiny_net()
    with torch.no_grad():
        teacher[-1].weight.mul_(2.0)
    inputs, labels = batch()
    kd = DistillationLoss(teacher, kd_weight=0.7, temperature=3.0)
    output = student(inputs)
    loss = kd(output, inputs, labels)
    with torch.no_grad():
        p_teacher = torch.softmax(teacher.eval()(inputs) / 3.0, dim=1)
    log_student = torch.log_softmax(output / 3.0, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_student)).sum(1).mean() * 9.0
    expected = 0.3 * F.cross_entropy(output, labels) + 0.7 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(p.requires_grad for p in teacher.parameters())  # the caller's model is not frozen


def test_distillation_alone_needs_no_labels():
    """kd_weight 1: the loss is the KL term alone (the oracle: the formula above), and no labels are asked for."""
    student, teacher = tiny_net(), tiny_net()
    inputs, _ = batch()
    output = student(inputs)
    loss = DistillationLoss(teacher, kd_weight=1.0, temperature=2.0)(output, inputs)
    with torch.no_grad():
        p_teacher = torch.softmax(teacher.eval()(inputs) / 2.0, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(output / 2.0, dim=1))).sum(1).mean() * 4.0
    assert loss.item() == pytest.approx(kl.item(), rel=1e-5)


def _train(session, optimizer, steps: range) -> list[int]:
    """`steps` of a user's loop with distillation from the dense model, batch `step` each (so that a resumed run
    sees what an uninterrupted one does); the steps after which the session cut."""
    cuts = []
    kd = DistillationLoss(tiny_net())
    for step in steps:
        inputs, labels = batch(step)
        loss = kd(session.module(inputs), inputs, labels)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        session.after_backward()
        optimizer.step()
        if session.maybe_cut(optimizer):
            cuts.append(step + 1)
    return cuts


def test_session_prunes_to_the_target_and_keeps_the_optimizer_on_the_module():
    session = PruneWhileTraining(tiny_net(), batch()[0], macs=0.5, events=2, interval=2, round_to=4).train()
    optimizer = torch.optim.SGD(session.module.parameters(), lr=0.05, momentum=0.9)
    assert _train(session, optimizer, range(6)) == [2, 4] and session.finished
    assert session.statistics()["target"]["met"]
    module = session.module
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in module.parameters()}
    assert all(optimizer.state[p]["momentum_buffer"].shape == p.shape for p in module.parameters())


def test_a_session_whose_width_floors_stop_it_short_says_so_after_its_last_cut(caplog):
    """max_ratio 0.5 floors every width at half: 0.1 of the MACs cannot be reached, and the last cut returned as
    any other, said nothing (the pass refuses the same miss under `strict`)."""
    session = PruneWhileTraining(tiny_net(), batch()[0], macs=0.1, events=2, interval=2, round_to=1,
                                 max_ratio=0.5).train()
    optimizer = torch.optim.SGD(session.module.parameters(), lr=0.05, momentum=0.9)
    with caplog.at_level("WARNING", logger="prunefx.interop.recovery"):
        assert _train(session, optimizer, range(4)) == [2, 4] and session.finished
    target = session.statistics()["target"]
    assert not target["met"] and target["achieved"] > 0.2  # the oracle: the session's own count of the MACs
    assert f"last cut left macs={target['achieved']:.3f} of the dense model, short of the target 0.1" in caplog.text


@pytest.mark.parametrize("options, message", [
    ({"macs": 0.5, "params": 0.5}, "exactly one target"),
    ({"macs": 1.5}, "macs"),
    ({"macs": 0.5, "interval": 0}, "interval"),
    ({"macs": 0.5, "keep": "conv2d"}, "a list of node names, not the text 'conv2d'"),  # not its six letters
    ({"macs": 0.5, "keep": ["conv2d_typo"]}, "'keep' names 'conv2d_typo', which is not a node of"),  # before training
    ({"macs": 0.5, "write_back": 5}, "write_back must be a function"),
    ({"macs": 0.5, "initial_module": nn.Linear(2, 2)}, "initial_module is the module write_back writes into"),
])
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(PrunefxError, match=message) as raised:
        PruneWhileTraining(tiny_net(), batch()[0], **options)
    assert "\n" not in str(raised.value)


def test_a_teacher_that_is_no_model_is_refused():
    with pytest.raises(PrunefxError, match="teacher must be"):
        DistillationLoss("dense.pt")


def test_session_trains_the_written_back_module_of_the_callers_class():
    from prunefx.interop.write_back import to_module
    model = tiny_net()
    inputs, labels = batch()
    session = PruneWhileTraining(model, inputs, macs=0.5, events=1, interval=2, round_to=4,
                                 write_back=lambda program: to_module(program, model))
    session.train()
    module = session.module
    assert isinstance(module, nn.Sequential)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        loss = F.cross_entropy(module(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        session.after_backward()
        optimizer.step()
        if session.maybe_cut(optimizer):
            module = session.module
            with torch.no_grad():  # the cut started from the weights the module had trained
                session.eval()
                assert torch.allclose(module(inputs), session.program(inputs), atol=1e-5)
                session.train()
    assert isinstance(module, nn.Sequential) and module[0].out_channels < 16
    assert session.statistics()["target"]["met"]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in module.parameters()}


SAME = {"macs": 0.5, "prune_events": 2, "interval": 2, "round_to": 4, "lr": 0.05, "momentum": 0.9,
        "weight_decay": 5e-4, "kd_weight": 0.5, "temperature": 3.0}


def trainer_route(optimizer_state: str) -> dict[str, torch.Tensor]:
    """prunefx compress's route: the prune_while_training pass and its Trainer."""
    program = capture(tiny_net(), batch()[0])
    prune_while_training(program, config={**SAME, "steps": 6, "data": [batch(s) for s in range(6)],
                                          "progress": False, "optimizer_state": optimizer_state})
    return dict(program.module.named_parameters())


def plain_loop_route() -> dict[str, torch.Tensor]:
    """The same settings written as a user's own loop (examples/plain_loop_recovery.py's shape)."""
    model = tiny_net()
    session = PruneWhileTraining(model, batch()[0], macs=0.5, events=2, interval=2, round_to=4)
    kd = DistillationLoss(model, kd_weight=0.5, temperature=3.0)
    session.train()
    module = session.module
    params = list(module.parameters())
    optimizer = torch.optim.SGD([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 5e-4},
                                 {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps=0, total_steps=6))
    for inputs, labels in [batch(s) for s in range(6)]:
        loss = kd(module(inputs), inputs, labels)
        optimizer.zero_grad()
        loss.backward()
        session.after_backward()
        optimizer.step()
        schedule.step()
        if session.maybe_cut(optimizer):
            module = session.module
    return dict(module.named_parameters())


def test_compress_and_the_plain_loop_are_the_same_pieces():
    # Oracle: the hand-written loop. Both carry the optimizer's momentum across the cuts by default.
    carried, plain, restarted = trainer_route("carry"), plain_loop_route(), trainer_route("restart")
    assert carried.keys() == plain.keys()
    for name in carried:
        assert torch.allclose(carried[name], plain[name], rtol=1e-5, atol=1e-6), name
    assert any(not torch.allclose(carried[n], restarted[n]) for n in carried)  # the option changes something


def _steps(session, optimizer, inputs, labels, count: int) -> list[bool]:
    cuts = []
    for _ in range(count):
        F.cross_entropy(session.module(inputs), labels).backward()
        session.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        cuts.append(session.maybe_cut(optimizer))
    return cuts


def test_a_frozen_batch_norm_stays_frozen_through_a_cut_in_the_graph_and_the_written_back_module():
    from prunefx.interop.write_back import to_module
    model = tiny_net().train()
    model[1].eval()  # frozen, as fine-tuning recipes do
    inputs, labels = batch()
    session = PruneWhileTraining(model, inputs, macs=0.5, events=1, interval=1, round_to=4,
                                 write_back=lambda program: to_module(program, model))
    assert {name: m.training for name, m in session.module.named_modules()} == \
        {name: m.training for name, m in model.named_modules()}
    optimizer = torch.optim.SGD(session.module.parameters(), lr=0.01)
    assert _steps(session, optimizer, inputs, labels, 1) == [True]
    assert not session.module[1].training and session.module[4].training and session.module.training
    flags = [node.args[5] for node in session.program.graph.nodes if "batch_norm" in str(node.target)]
    assert flags == [False, True]


def test_a_cut_whose_write_back_fails_leaves_the_session_as_it_was_and_the_next_cut_works():
    from prunefx.interop.write_back import to_module
    model = tiny_net().train()
    inputs, labels = batch()
    refuse = [True]

    def write_back(program):
        if refuse[0]:
            raise PrunefxError("write-back refused")
        return to_module(program, model)

    session = PruneWhileTraining(model, inputs, macs=0.5, events=1, interval=1, round_to=4, write_back=write_back)
    copy_module = session.module  # a copy of the caller's model until the first cut
    optimizer = torch.optim.SGD(copy_module.parameters(), lr=0.01)
    widths = [tuple(p.shape) for p in session.program.parameters()]
    with pytest.raises(PrunefxError, match="write-back refused"):
        _steps(session, optimizer, inputs, labels, 1)
    assert session.events == [] and session.module is copy_module
    assert [tuple(p.shape) for p in session.program.parameters()] == widths
    refuse[0] = False
    assert _steps(session, optimizer, inputs, labels, 1) == [True]
    assert len(session.events) == 1 and session.module[0].out_channels < 16
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == \
        {id(p) for p in session.module.parameters()}


def test_a_dense_program_given_to_the_session_is_left_as_found():
    """The session trains and cuts its own copy, as it captures one of an nn.Module."""
    torch.manual_seed(0)
    dense = capture(tiny_net(), batch()[0]).eval()
    before = {name: tensor.clone() for name, tensor in dense.state_dict().items()}
    session = PruneWhileTraining(dense, macs=0.5, events=1, interval=1, round_to=4).train()
    optimizer = torch.optim.SGD(session.module.parameters(), lr=0.1)
    inputs, labels = batch(1)
    F.cross_entropy(session.module(inputs), labels).backward()
    session.after_backward()
    optimizer.step()
    assert session.maybe_cut(optimizer) and session.finished
    assert not dense.training and dense.state_dict().keys() == before.keys()
    assert all(torch.equal(before[name], tensor) for name, tensor in dense.state_dict().items())


def test_a_module_teacher_leaves_what_the_users_hooks_keep_as_found():
    """The teacher is the user's module or a copy that shares the closures of its hooks: the user's list of
    activations must not fill up with the teacher's, batch after batch (the user never called their model)."""
    from prunefx.passes.training.config import TrainConfig
    from prunefx.passes.training.teacher import frozen_teacher

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    seen = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output))
    x, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    student = capture(model, x).train()
    loss = DistillationLoss(model, kd_weight=0.5)
    run = frozen_teacher(model, TrainConfig(steps=1), torch.device("cpu"), student)
    for _ in range(3):
        loss(student(x), x, labels).backward()
        expected = model(x)
        del seen[-1]  # the one call the user made
        torch.testing.assert_close(run((x,))[0], expected)
    assert seen == []


def test_distillation_loss_leaves_the_batch_a_module_teacher_writes_into_as_given():
    teacher = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()
    x, labels = batch()
    given = x.clone()
    student = capture(tiny_net().eval(), x)
    DistillationLoss(teacher, kd_weight=0.5)(student(x), x, labels)
    assert torch.equal(x, given)


def test_an_interrupted_cut_in_training_leaves_the_trained_weights():
    """The trainer's cut tracked surviving elements by running on index-valued tensors, in the trained Program
    itself: a cut that failed (Ctrl-C, out of memory, a refusal) left it holding those indices instead of weights."""
    from prunefx.passes.prune_while_training import PruneWhileTrainingConfig, PruningSchedule, _target

    program = capture(tiny_net().eval(), batch()[0])
    trained = {name: tensor.clone() for name, tensor in program.state_dict().items()}
    options = PruneWhileTrainingConfig.parse({"macs": 0.5, "prune_events": 1, "interval": 1, "steps": 1})
    schedule = PruningSchedule(program, _target(options), options)

    class StandInTrainer:
        def __init__(self):
            self.program, self.optimizer, self.last_losses = program, None, {}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    schedule.cut = interrupted
    with pytest.raises(KeyboardInterrupt):
        schedule.maybe_prune(StandInTrainer(), 1)
    assert all(torch.equal(tensor, trained[name]) for name, tensor in program.state_dict().items())


# --- saving and resuming a session -------------------------------------------------------------------

@pytest.mark.parametrize("write_back", [False, True])
def test_a_session_saved_and_loaded_midway_ends_where_an_uninterrupted_one_does(tmp_path, write_back):
    """The oracle: the same loop run without a break. Saved after the first cut with scores accumulated since,
    loaded into a session made again from the dense model, the loop reaches the same cuts and the same weights."""
    import prunefx

    def session_of(model):
        back = (lambda program: prunefx.to_module(program, model)) if write_back else None
        return PruneWhileTraining(model, batch()[0], macs=0.5, events=2, interval=3, round_to=4,
                                  write_back=back).train()

    def optimizer_of(session):
        return torch.optim.SGD(session.module.parameters(), lr=0.05, momentum=0.9)

    whole = session_of(tiny_net())
    whole_optimizer = optimizer_of(whole)
    assert _train(whole, whole_optimizer, range(8)) == [3, 6]

    first = session_of(tiny_net())
    first_optimizer = optimizer_of(first)
    assert _train(first, first_optimizer, range(4)) == [3]
    first.save(tmp_path / "session")
    torch.save(first_optimizer.state_dict(), tmp_path / "optimizer.pt")

    resumed = session_of(tiny_net()).load(tmp_path / "session").train()
    optimizer = optimizer_of(resumed)
    optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
    assert resumed.step == 4 and len(resumed.events) == 1
    saved_scores, scores = first.schedule.fisher, resumed.schedule.fisher  # what the next cut ranks by
    assert scores.batches == saved_scores.batches == 1 and scores.sums.keys() == saved_scores.sums.keys()
    assert all(torch.equal(scores.sums[key], sums.cpu()) for key, sums in saved_scores.sums.items())
    assert _train(resumed, optimizer, range(4, 8)) == [6]
    assert [event["step"] for event in resumed.events] == [event["step"] for event in whole.events]
    want, got = dict(whole.module.named_parameters()), dict(resumed.module.named_parameters())
    assert want.keys() == got.keys()
    for name, parameter in want.items():
        torch.testing.assert_close(got[name], parameter, rtol=1e-5, atol=1e-6, msg=name)


def test_loading_into_a_session_made_from_the_pruned_model_is_refused(tmp_path):
    """Made from the saved pruned graph, a session would take it for the dense model and misread every
    fraction kept: refused in one line."""
    session = PruneWhileTraining(tiny_net(), batch()[0], macs=0.5, events=2, interval=1, round_to=4).train()
    _train(session, torch.optim.SGD(session.module.parameters(), lr=0.05), range(1))
    session.save(tmp_path / "session")
    wrong = PruneWhileTraining(session.program, macs=0.5, events=2, interval=1, round_to=4)
    with pytest.raises(PrunefxError, match="same dense model, not the pruned one") as raised:
        wrong.load(tmp_path / "session")
    assert "\n" not in str(raised.value)
    other = PruneWhileTraining(tiny_net(), batch()[0], macs=0.5, events=3, interval=1, round_to=4)
    with pytest.raises(PrunefxError, match="prune_events=2, this run has prune_events=3"):
        other.load(tmp_path / "session")
    with pytest.raises(PrunefxError, match="holds no PruneWhileTraining.save"):
        other.load(tmp_path / "nothing")


def test_a_trainer_given_a_session_folder_as_its_checkpoints_refuses_it_in_one_line(tmp_path):
    """A PruneWhileTraining.save folder is not a trainer checkpoint: refused by name (it was a KeyError)."""
    from prunefx.passes.training.engine import TrainConfig, Trainer

    session = PruneWhileTraining(tiny_net(), batch()[0], macs=0.5, events=2, interval=1, round_to=4).train()
    _train(session, torch.optim.SGD(session.module.parameters(), lr=0.05), range(1))
    session.save(tmp_path / "session")
    trainer = Trainer(capture(tiny_net().eval(), batch()[0]), teacher=None, data=[batch()],
                      config=TrainConfig(steps=2, kd_weight=0.0, checkpoint_dir=tmp_path / "session", resume=True,
                                         progress=False))
    with pytest.raises(PrunefxError, match="holds no trainer checkpoint") as raised:
        trainer.fit()
    assert "\n" not in str(raised.value)


class MakesItsPositions(nn.Module):
    """Builds a tensor on the device named at capture (`torch.arange(..., device=cpu)` in the graph)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + torch.arange(8, device=x.device, dtype=x.dtype).view(1, 8, 1, 1)


def _named_devices(program) -> set[str]:
    return {str(node.kwargs["device"]) for node in program.graph.nodes if node.kwargs.get("device") is not None}


def test_a_session_whose_module_the_caller_moved_moves_its_program_along_before_a_cut():
    """`session.module.cuda()` moves the graph's weights but not the example inputs a cut runs the Program on, nor
    the device its graph names: the first cut, `interval` steps in, mixed devices. Here the meta device stands
    in for the GPU (the GPU test below trains and cuts on one)."""
    session = PruneWhileTraining(MakesItsPositions(), torch.randn(2, 3, 8, 8), macs=0.5, events=1, interval=1)
    assert _named_devices(session.program) == {"cpu"}
    session.module.to("meta")
    session._follow_the_module()
    assert session.program.example_inputs[0].device.type == "meta" and _named_devices(session.program) == {"meta"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_a_session_trained_on_a_gpu_after_module_cuda_cuts_there():
    session = PruneWhileTraining(tiny_net(), batch()[0], macs=0.5, events=2, interval=2, round_to=4).train()
    session.module.cuda()
    optimizer = torch.optim.SGD(session.module.parameters(), lr=0.05, momentum=0.9)
    for step in range(4):
        inputs, labels = (t.cuda() for t in batch(step))
        loss = F.cross_entropy(session.module(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        session.after_backward()
        optimizer.step()
        session.maybe_cut(optimizer)
    assert session.finished and session.statistics()["target"]["met"]
    assert all(p.is_cuda for p in session.module.parameters()) and session.program.example_inputs[0].is_cuda
