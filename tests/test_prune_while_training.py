"""CPD's prune-while-distilling schedule: it reaches the target through its events and leaves a valid Program."""

import pytest
import torch

from prunefx.graph import PrunefxError, capture, count, verify
from prunefx.models import build_model
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.prune_while_training import prune_while_training


@pytest.fixture
def resnet20_and_data():
    torch.manual_seed(0)
    model = build_model("prunefx:resnet20").module
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator))
            for _ in range(4)]
    return capture(model, data[0][0], name="resnet20"), data


def test_reaches_the_macs_target_in_events_and_stays_valid(resnet20_and_data):
    program, data = resnet20_and_data
    dense_macs = count(program).macs
    result = prune_while_training(program, config={
        "data": data, "macs": 0.5, "steps": 12, "interval": 3, "prune_events": 3, "round_to": 4,
        "lr": 0.01, "progress": False})
    events = result.stats["events"]
    assert [e["step"] for e in events] == [3, 6, 9]
    # Every event cuts further, along a geometric schedule of the dense MACs.
    assert events[0]["macs"] > events[1]["macs"] > events[2]["macs"]
    assert events[0]["macs"] / dense_macs == pytest.approx(0.5 ** (1 / 3), rel=0.03)
    assert count(result.program).macs / dense_macs == pytest.approx(0.5, rel=0.03)
    assert result.stats["target"]["met"]
    assert result.stats["training"]["steps_run"] == 12  # training went on after the last cut
    assert not result.program.training
    verify(result.program)
    assert result.program(data[0][0]).shape == (8, 10)


def test_max_ratio_holds_against_the_dense_widths_across_cuts(resnet20_and_data):
    program, data = resnet20_and_data
    dense = {name: p.shape[0] for name, p in program.module.named_parameters() if p.dim() == 4}
    result = prune_while_training(program, config={
        "data": data, "macs": 0.3, "steps": 12, "interval": 3, "prune_events": 4, "round_to": 1,
        "max_ratio": 0.5, "lr": 0.01, "progress": False, "strict": False})
    assert len(result.stats["events"]) == 4
    pruned = {name: p.shape[0] for name, p in result.program.module.named_parameters() if p.dim() == 4}
    # Each cut alone may take half of what is left; all of them together keep half of every dense width.
    assert all(pruned[name] >= dense[name] / 2 for name in dense)
    assert any(pruned[name] == dense[name] / 2 for name in dense)  # the bound is reached, not avoided


def test_heads_keep_their_own_floor_and_a_vit_reaches_a_fifth_of_its_macs():
    # Heads and head dims slice the same qkv rows: a floor shared by name would hold the 4 heads to the
    # head dims' 7 (a fifth of 32), so no head could go and the ViT would stop above its target.
    torch.manual_seed(0)
    program = capture(build_model("prunefx:vit_tiny_fmnist").module.eval(), torch.randn(8, 1, 28, 28),
                      name="vit_tiny_fmnist")
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator))
            for _ in range(2)]
    dense_macs = count(program).macs
    qkv = [name for name, _ in program.module.named_parameters() if name.endswith("qkv.weight")]
    dense_rows = sum(program.state_dict()[name].shape[0] for name in qkv)
    result = prune_while_training(program, config={
        "data": data, "macs": 0.2, "steps": 10, "interval": 2, "prune_events": 5, "round_to": 4,
        "lr": 1e-4, "progress": False})
    assert count(result.program).macs / dense_macs == pytest.approx(0.2, rel=0.03)
    rows = sum(result.program.state_dict()[name].shape[0] for name in qkv)
    assert rows < dense_rows and rows % 96 == 0  # whole heads went: 3 x 32 rows each


def test_a_budget_too_short_for_the_schedule_is_refused(resnet20_and_data):
    program, data = resnet20_and_data
    with pytest.raises(PrunefxError, match="cannot hold 5 pruning events"):
        prune_while_training(program, config={"data": data, "macs": 0.5, "steps": 10, "interval": 5,
                                              "progress": False})


@pytest.mark.parametrize("config, message", [
    ({"macs": 0.5}, "needs training batches"),
    ({"data": [], "channels": 0.5, "steps": 10}, "exactly one target among macs, params"),
    ({"data": [], "macs": 0.5, "params": 0.5, "steps": 10}, "exactly one target"),
    ({"data": [], "macs": 0.5, "steps": 10, "bogus": 1}, "unknown option"),
])
def test_bad_configurations_are_explained(resnet20_and_data, config, message):
    program, _ = resnet20_and_data
    with pytest.raises(PrunefxError, match=message):
        prune_while_training(program, config=config)


class _Stop(Exception):
    pass


def test_a_run_resumed_from_a_checkpoint_cuts_as_the_uninterrupted_one(resnet20_and_data, tmp_path, monkeypatch):
    """The schedule's cuts and scores are in the checkpoint: resumed without them it started its events again,
    cut nothing it needed and missed the target (0.71 of the MACs where 0.5 was asked)."""
    from prunefx.passes.training import engine
    from prunefx.passes.training.config import TrainingError
    program, data = resnet20_and_data
    config = {"data": data, "macs": 0.5, "steps": 8, "interval": 2, "prune_events": 4, "round_to": 4, "lr": 0.01,
              "kd_weight": 0.0, "progress": False, "checkpoint_every": 3}
    whole = prune_while_training(program.clone(), config={**config, "checkpoint_dir": str(tmp_path / "whole")})
    periodic = engine.Trainer._periodic

    def stopped_at_5(self, final):
        periodic(self, final=final)
        if self.step == 5:
            raise _Stop

    cut = {**config, "checkpoint_dir": str(tmp_path / "cut"), "resume": True}
    monkeypatch.setattr(engine.Trainer, "_periodic", stopped_at_5)
    with pytest.raises(_Stop):
        prune_while_training(program.clone(), config=cut)
    monkeypatch.setattr(engine.Trainer, "_periodic", periodic)
    # through a Pipeline (every recipe): the pass still hands back the Program it was given, now trained
    (_, resumed), = Pipeline([(prune_while_training, cut)]).run(program).steps
    assert resumed.stats["training"]["resumed_from"] == 3  # after the first cut, mid-way to the second
    assert [e["step"] for e in resumed.stats["events"]] == [2, 4, 6, 8]
    assert resumed.stats["target"]["met"]
    for (name, expected), (_, actual) in zip(whole.program.state_dict().items(),
                                             resumed.program.state_dict().items()):
        torch.testing.assert_close(actual, expected, msg=name)
    with pytest.raises(TrainingError, match="prune_while_training's fraction=0.5, this run has fraction=0.4"):
        prune_while_training(program.clone(), config={**cut, "macs": 0.4})


def test_it_raises_the_blends_linearize_blocks_left_as_distill_does():
    """linearize_blocks hands its blends to the next training pass, which fades the activations out while it
    trains: left at 0, merge_blocks would find nothing to merge."""
    from prunefx.graph.attributes import get_tensor
    from prunefx.passes.linearize_blocks import linearize_blocks

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator))
            for _ in range(4)]
    dense = capture(build_model("prunefx:mobilenetv2_small").module.eval(), data[0][0], name="mbv2").eval()
    linearized = linearize_blocks(dense, config={"count": 2, "calibration": [(x,) for x, _ in data]}).program
    blends = list(linearized.analysis.linearize.blends)
    assert blends and all(float(get_tensor(linearized.module, name)) == 0.0 for name in blends)
    trained = prune_while_training(linearized, config={
        "data": data, "teacher": dense, "macs": 0.8, "steps": 8, "interval": 2, "prune_events": 2, "round_to": 4,
        "lr": 0.01, "strict": False, "progress": False}).program
    assert [float(get_tensor(trained.module, name)) for name in blends] == [1.0] * len(blends)
