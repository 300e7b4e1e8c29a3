"""capture, Pipeline.run and to_module leave the user's model as they found it (graph/model_state.py):
every submodule's attributes, containers, buffers and hooks, what the hooks keep, and the model's own
default forward, on success and on refusal. The oracle is a recursive snapshot of `vars()` of every
submodule, taken before and compared after (tensors by identity, type and value)."""

from __future__ import annotations

import contextlib
import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

import prunefx
from prunefx.graph.errors import CaptureError


def _frozen(value):
    """A comparable record of `value`: tensors by (type, identity, a copy of the values), containers by
    their contents, everything else by reference."""
    if isinstance(value, torch.Tensor):
        return ("tensor", type(value), id(value), value.detach().clone())
    if isinstance(value, dict):
        return (type(value), tuple((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple, set)):
        return (type(value), tuple(_frozen(item) for item in value))
    return value


def full_state(model: nn.Module) -> dict:
    return {f"{path}:{key}": _frozen(value) for path, module in model.named_modules()
            for key, value in vars(module).items()}


def _assert_same(before, after, where: str = "") -> None:
    if isinstance(before, tuple) and before and before[0] == "tensor":
        assert isinstance(after, tuple) and after[:3] == before[:3], f"{where}: another tensor"
        assert torch.equal(after[3], before[3]), f"{where}: other values"
    elif isinstance(before, tuple):
        assert isinstance(after, tuple) and len(after) == len(before), f"{where}: {after!r} != {before!r}"
        for index, (first, second) in enumerate(zip(before, after)):
            _assert_same(first, second, f"{where}[{index}]")
    else:
        assert after is before or after == before, f"{where}: {after!r} != {before!r}"


def assert_state_unchanged(before: dict, model: nn.Module) -> None:
    after = full_state(model)
    assert sorted(after) == sorted(before)
    for key in before:
        _assert_same(before[key], after[key], key)


class Branchy(nn.Module):
    """A conv, a batch norm in training mode, an attribute the forward sets, and optionally a branch on data."""

    def __init__(self, data_dependent: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.data_dependent = data_dependent
        self.last_shape = None

    def forward(self, x):
        y = self.norm(self.conv(x))
        self.last_shape = y.shape
        if self.data_dependent and y.sum() > 0:
            return y * 2
        return y


def _hooked(model: nn.Module) -> list:
    kept = []
    model.conv.register_forward_hook(lambda module, args, output: kept.append(output))
    model.norm.register_forward_pre_hook(lambda module, args: kept.append(args[0]))
    return kept


def test_capture_leaves_a_training_model_its_hooks_and_their_list_as_found(one_thread):
    model = Branchy().train()
    kept = _hooked(model)
    x = torch.randn(2, 3, 8, 8)
    before = full_state(model)
    program = prunefx.capture(model, x)
    assert kept == []  # what the hooks kept during the export is gone again
    assert_state_unchanged(before, model)  # batch norm statistics, `last_shape`, training flags, hooks
    program.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))
    assert len(kept) == 2 and all(type(t) is torch.Tensor for t in kept)  # the hooks are back and run


class CallRecorder:
    """A hook that is an object with __call__: it counts its calls and keeps each output in its own list."""

    def __init__(self):
        self.calls, self.outputs = 0, []

    def __call__(self, module, inputs, output):
        self.calls += 1
        self.outputs.append(output)


class Owner:
    """A hook that is a bound method keeping outputs in its object's list."""

    def __init__(self):
        self.outputs = []

    def hook(self, module, inputs, output):
        self.outputs.append(output)


def test_hooks_that_are_objects_or_their_methods_keep_only_the_users_own_calls(one_thread):
    model, recorder, owner = Branchy().eval(), CallRecorder(), Owner()
    model.register_forward_hook(recorder)
    model.register_forward_hook(owner.hook)
    x = torch.randn(2, 3, 8, 8)
    model(x)
    prunefx.capture(model, x)
    assert recorder.calls == 1 and len(recorder.outputs) == len(owner.outputs) == 1
    assert type(recorder.outputs[0]) is torch.Tensor and type(owner.outputs[0]) is torch.Tensor  # no fake tensor


def test_a_hook_that_computes_is_part_of_the_program_and_its_records_are_put_back(one_thread):
    """Libraries compute with hooks (Hugging Face collects hidden states in them): a hook that changes an
    output is captured, one that records into an object it is bound to finds that object as it was."""

    class Recorder:
        def __init__(self):
            self.last = None

        def hook(self, module, args, output):
            self.last = output
            return output * 2

    model = Branchy().eval()
    recorder = Recorder()
    model.conv.register_forward_hook(recorder.hook)
    x = torch.randn(2, 3, 8, 8)
    program = prunefx.capture(model, x).eval()
    assert recorder.last is None  # its attribute as found, not a fake tensor
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))  # the doubling is in the Program
        doubled = model(x)
        recorder.last = None
    assert not torch.equal(doubled, _without_hooks(model)(x))


def _without_hooks(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    for module in plain.modules():
        module._forward_hooks.clear()
    return plain


def test_a_refused_capture_leaves_the_model_and_prints_one_line(one_thread, capfd):
    model = Branchy(data_dependent=True).train()
    kept = _hooked(model)
    before = full_state(model)
    with pytest.raises(CaptureError, match="could not capture model 'Branchy'"):
        prunefx.capture(model, torch.randn(2, 3, 8, 8))
    assert kept == []
    assert_state_unchanged(before, model)
    assert capfd.readouterr().err == ""  # torch's dump of the partial graph stays off stderr


def test_torchs_own_pre_hooks_are_part_of_the_model(one_thread):
    """weight_norm computes the weight in a forward pre-hook: the Program must compute it too."""
    model = nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 3)))
    with torch.no_grad():
        model[0].weight_g.mul_(3)
    x = torch.randn(2, 4)
    before = full_state(model)
    program = prunefx.capture(model, x)
    assert_state_unchanged(before, model)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))


def test_pipeline_run_and_to_module_leave_model_and_program_as_found(one_thread):
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 4, 1)).eval()
    kept = []
    model[0].register_forward_hook(lambda module, args, output: kept.append(output))
    x = torch.randn(1, 3, 8, 8)
    program = prunefx.capture(model, x)
    before_model = full_state(model)
    before_program = full_state(program.module)
    pruned = prunefx.Pipeline([(prunefx.passes.remove_channels, {"macs": 0.5})]).run(program).program
    assert_state_unchanged(before_program, program.module)
    written = prunefx.to_module(pruned, model)
    assert kept == []  # the write-back's proofs ran the copy without the user's hook
    assert_state_unchanged(before_model, model)
    assert written[0].out_channels < 32
    with torch.no_grad():
        torch.testing.assert_close(written(x), pruned(x), rtol=1e-5, atol=1e-5)


class MacsLatency:
    """A Measurer whose latency is the MACs (ms per 1e6): the budget search without timing anything."""

    round_to = None

    def __call__(self, dense, candidate):
        return prunefx.count(dense).macs / 1e6, prunefx.count(candidate).macs / 1e6, 0.0

    def confirm(self, dense, candidate):
        from prunefx.passes.budget.measurement import Timing

        return Timing(*self(dense, candidate))


def _small_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    return prunefx.capture(model.eval(), torch.randn(1, 3, 16, 16)).eval()


@pytest.mark.parametrize("speedup", [1.5, 100.0])  # met, and refused as unreachable
def test_meet_budget_leaves_the_program_as_found(one_thread, speedup):
    from prunefx.data.calibration import noise_batches

    program = _small_program()
    inputs = program.example_inputs
    before = full_state(program.module)
    width = {"importance": "l2", "compensate": False, "round_to": 1}
    try:
        chosen, _ = prunefx.meet_budget(program, speedup=speedup, measurer=MacsLatency(), width=width,
                                        calibration=noise_batches(inputs[0], 2))
        assert prunefx.count(chosen).macs < prunefx.count(program).macs
    except prunefx.BudgetUnreachable:
        assert speedup == 100.0
    assert_state_unchanged(before, program.module)
    assert len(program.example_inputs) == 1 and torch.equal(program.example_inputs[0], inputs[0])


def test_a_failing_pipeline_leaves_the_program_as_found(one_thread):
    program = _small_program()
    before = full_state(program.module)

    def breaks_half_way(program, config):
        program.module.graph.erase_node(list(program.graph.nodes)[-2])  # rewrites its (copied) Program...
        raise RuntimeError("and then fails")

    with pytest.raises(prunefx.PipelineError, match="breaks_half_way"):
        prunefx.Pipeline([(prunefx.passes.fold_batchnorm, {}), (breaks_half_way, {})]).run(program)
    assert_state_unchanged(before, program.module)


def test_to_module_names_a_program_of_another_model(one_thread):
    x = torch.randn(1, 3, 8, 8)
    program = prunefx.capture(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), x)
    for other in (nn.Sequential(nn.Identity(), nn.Conv2d(3, 4, 3)),  # no tensor name in common
                  nn.Sequential(nn.Linear(8, 4))):  # '0.weight' of two dimensions, not four
        with pytest.raises(prunefx.PrunefxError, match="captured from another model") as refused:
            prunefx.to_module(program, other.eval())
        assert "merges layers" not in str(refused.value)


class DrawsNoise(nn.Module):
    """A forward that draws from torch's random state in eval mode too (noise scaled away, as some augmentation
    or stochastic layers leave it): every run of the model or its Program moves the state."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + 0 * torch.rand(1)


def test_to_module_leaves_the_random_state_as_found(one_thread):
    """Its proofs run the model and the Program several times; the caller's next draw must not depend on that."""
    torch.manual_seed(0)
    model = DrawsNoise().eval()
    program = prunefx.capture(model, torch.randn(1, 3, 4, 4)).eval()
    prunefx.passes.remove_channels(program, config={"macs": 0.5, "round_to": 1})
    state = torch.get_rng_state()
    prunefx.to_module(program, model)
    assert torch.equal(torch.get_rng_state(), state)


class PythonLayerDrop(nn.Module):
    """A layer drop spelled with Python's and numpy's random numbers, as some libraries write it."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        x = self.first(x)
        if self.training and (random.random() < 0.1 or np.random.rand() < 0.1):
            return x
        return self.second(x)


@pytest.mark.parametrize("exports", [True, False], ids=["captured", "refused"])
def test_capture_leaves_pythons_and_numpys_random_state_as_found(one_thread, monkeypatch, exports):
    """torch.export runs the model's Python code, and a refusal's eager check runs the model: draws from Python's
    and numpy's random numbers there must not move the caller's."""
    if not exports:
        monkeypatch.setattr(torch.export, "export", _refuses)
    python, numpy_state = random.getstate(), np.random.get_state()
    expected = (random.random(), np.random.rand())
    random.setstate(python)
    np.random.set_state(numpy_state)
    with contextlib.nullcontext() if exports else pytest.raises(CaptureError):
        prunefx.capture(PythonLayerDrop().train(), torch.randn(2, 8))
    assert (random.random(), np.random.rand()) == expected


def _refuses(*args, **kwargs):
    raise RuntimeError("not exportable")


ULTRALYTICS_YAMLS = ("yolov8n.yaml", pytest.param("yolov8n-seg.yaml", marks=pytest.mark.slow),
                     pytest.param("yolov8n-pose.yaml", marks=pytest.mark.slow))


@pytest.mark.parametrize("yaml", ULTRALYTICS_YAMLS)
def test_a_raw_ultralytics_model_refused_then_prepared_captures_prunes_and_writes_back(yaml, one_thread):
    pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0, dev extra) is not installed")
    from ultralytics.nn.tasks import (
        DetectionModel,
        PoseModel,
        SegmentationModel,
        guess_model_task,
        yaml_model_load,
    )

    task = guess_model_task(yaml_model_load(yaml))
    model_class = {"detect": DetectionModel, "segment": SegmentationModel, "pose": PoseModel}[task]
    model, twin = (model_class(yaml, verbose=False).eval() for _ in range(2))
    twin.load_state_dict(model.state_dict())  # the oracle: the same model, never captured
    x = torch.rand(1, 3, 64, 64)
    before = full_state(model)
    with pytest.raises(CaptureError, match="prepare_ultralytics"):
        prunefx.capture(model, x)
    assert_state_unchanged(before, model)  # no FakeTensor anchors, no `shape` set
    with torch.no_grad():  # it still runs in Ultralytics' default mode, as the twin does
        torch.testing.assert_close(model(x)[0], twin(x)[0])

    prunefx.models.prepare_ultralytics(model)
    before = full_state(model)
    program = prunefx.capture(model, x).eval()
    assert_state_unchanged(before, model)
    dense_program = full_state(program.module)
    pruned = prunefx.Pipeline([(prunefx.passes.remove_channels, {"macs": 0.7})]).run(program).program
    chosen, _ = prunefx.meet_budget(program, speedup=1.3, measurer=MacsLatency(), confirm=False,
                                    width={"importance": "l2", "compensate": False})
    assert prunefx.count(chosen).macs < prunefx.count(program).macs
    assert_state_unchanged(dense_program, program.module)  # neither the Pipeline nor the budget search
    written = prunefx.to_module(pruned, model)
    assert_state_unchanged(before, model)
    with torch.no_grad():
        torch.testing.assert_close(written(x), pruned(x), rtol=1e-4, atol=1e-4)


def _frozen_norm_in_training_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)).train()
    model[1].eval()  # fine-tuning with the first batch norm frozen
    return model


def _flags(program) -> list[bool]:
    from prunefx.graph.training_flags import training_flag_index
    return [node.args[index] for node in program.graph.nodes if (index := training_flag_index(node)) is not None]


def test_ultralytics_wrapper_is_refused_before_it_runs(one_thread, capfd, monkeypatch):
    """Called, the YOLO wrapper runs Ultralytics' predict pipeline: it prints, and adds its callbacks to the
    wrapper's lists. The refusal names the network to capture instead, and nothing of the wrapper changes."""
    pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0, dev extra) is not installed")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    wrapper = YOLO("yolov8n.yaml")
    callbacks = {event: list(functions) for event, functions in wrapper.callbacks.items()}
    capfd.readouterr()
    with pytest.raises(CaptureError, match=r"YOLO wrapper: capture its network, after "
                                           r"prunefx.models.prepare_ultralytics\(YOLO\(...\).model\)"):
        prunefx.capture(wrapper, torch.rand(1, 3, 64, 64))
    assert {event: list(functions) for event, functions in wrapper.callbacks.items()} == callbacks
    assert capfd.readouterr().out == ""


def test_ultralytics_networks_outside_its_nn_package_are_captured():
    """SAM's image encoder and TinyViT live in ultralytics.models: networks, not the wrapper."""
    encoder_class = type("ImageEncoderViT", (nn.Sequential,), {"__module__": "ultralytics.models.sam.modules.encoders"})
    program = prunefx.capture(encoder_class(nn.Conv2d(3, 4, 1)).eval(), torch.rand(1, 3, 8, 8))
    assert prunefx.count(program).params == 16


def test_a_frozen_batch_norm_in_a_training_program_stays_frozen_through_evaluating_and_to_module(one_thread):
    """Program.evaluating (behind to_module's proof and the depth search) gives every flag back as it was, not
    the graph's one overall mode."""
    model = _frozen_norm_in_training_model()
    program = prunefx.capture(model, torch.randn(2, 3, 8, 8))
    # the oracle: the model's own modes, as captured; the training batch norm's batch counter (+1) before it
    assert _flags(program) == [False, 1, True]
    with program.evaluating():
        assert _flags(program) == [False, 0, False]
    assert _flags(program) == [False, 1, True]
    before = full_state(model)
    prunefx.to_module(program, model)
    assert _flags(program) == [False, 1, True]
    assert_state_unchanged(before, model)


def _modes(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


def test_evaluation_gives_a_frozen_batch_norm_its_mode_back(one_thread):
    """evaluate (classification) and evaluate_dense run in eval mode and give every submodule its own mode back."""
    from prunefx.dense_tasks import evaluate_dense
    from prunefx.passes.training.engine import evaluate
    model = _frozen_norm_in_training_model()
    before = _modes(model)
    assert not all(before) and any(before)  # the oracle: mixed modes, set by hand
    evaluate(model, [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))])
    assert _modes(model) == before
    dense = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.1)).train()
    dense[1].eval()
    before = _modes(dense)
    evaluate_dense(dense, [(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))], task="segmentation",
                   num_classes=4)
    assert _modes(dense) == before


KEPT_BY_A_SCRIPT: list = []  # a script's module-level list, as `activations = []` at the top of a notebook


def _keep_in_the_scripts_list(module, args, output):
    KEPT_BY_A_SCRIPT.append(output)


def test_a_hook_keeping_outputs_in_a_module_level_list_finds_it_as_it_was(one_thread):
    """capture and to_module run the model (on fake tensors, for the export): a hook writing into a global list
    gets its own calls' tensors only, none of theirs."""
    model = Branchy().eval()
    handle = model.conv.register_forward_hook(_keep_in_the_scripts_list)
    KEPT_BY_A_SCRIPT.clear()
    try:
        program = prunefx.capture(model, torch.randn(2, 3, 8, 8))
        assert KEPT_BY_A_SCRIPT == []
        prunefx.to_module(program, model)
        assert KEPT_BY_A_SCRIPT == []
        with torch.no_grad():
            model(torch.randn(2, 3, 8, 8))
        assert len(KEPT_BY_A_SCRIPT) == 1 and type(KEPT_BY_A_SCRIPT[0]) is torch.Tensor  # the hook still runs
    finally:
        handle.remove()
        KEPT_BY_A_SCRIPT.clear()


def test_a_lazy_module_not_yet_called_is_refused_before_anything_runs_and_still_works():
    """The eager check after a failed export was the first call that turns a LazyLinear into a Linear, which then
    failed in the user's next call."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    with pytest.raises(CaptureError, match=r"1 \(LazyLinear\) has not made its weights yet"):
        prunefx.capture(model, torch.randn(2, 3, 4))
    assert isinstance(model[1], torch.nn.LazyLinear)
    assert model(torch.randn(2, 3, 4)).shape == (2, 4)  # the user's own first call makes them
    assert prunefx.capture(model, torch.randn(2, 3, 4)).run_example().shape == (2, 4)


_CALLS = torch.zeros(())


def test_tensors_a_hook_updates_in_place_are_put_back_after_capture_and_after_a_refusal():
    """A call counter in the script's globals and a running sum in a closure: the export's run (and, on refusal,
    the eager check's) must not count."""
    running = torch.zeros(4)

    def hook(module, inputs, output):
        _CALLS.add_(1)
        running.add_(output.detach().mean((0, 2, 3)))

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    model[0].register_forward_hook(hook)

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            y = self.net(x)
            return y if y.sum() > 0 else -y

    prunefx.capture(model, torch.randn(1, 3, 6, 6))
    with pytest.raises(CaptureError):
        prunefx.capture(DataDependent(), torch.randn(1, 3, 6, 6))
    assert float(_CALLS) == 0 and not running.any()
    model(torch.randn(1, 3, 6, 6))  # the hook still counts the user's own calls
    assert float(_CALLS) == 1 and running.any()


class WritesIntoItsInput(nn.Module):
    """Opens with an in-place ReLU, which writes into the caller's tensor; `branch` makes export fail."""

    def __init__(self, branch: bool = False):
        super().__init__()
        self.relu, self.conv, self.branch = nn.ReLU(inplace=True), nn.Conv2d(3, 4, 1), branch

    def forward(self, x):
        y = self.conv(self.relu(x))
        if self.branch and y.sum() > 0:  # data-dependent: torch.export refuses, the eager check runs
            return y * 2
        return y


def test_a_program_whose_model_writes_into_its_input_leaves_the_callers_tensor_and_saves(one_thread, tmp_path):
    """The Program runs on a copy of an input its graph writes into: the caller's batch stays as it was (the oracle:
    a copy taken before), and the saved file, which may not write into its inputs, loads."""
    x = torch.randn(1, 3, 4, 4)
    before = x.clone()
    program = prunefx.capture(WritesIntoItsInput().eval(), x)
    expected = torch.nn.functional.conv2d(before.relu(), program.module.get_parameter("conv.weight"),
                                          program.module.get_parameter("conv.bias"))
    torch.testing.assert_close(program(x), expected)
    assert torch.equal(x, before)
    loaded = prunefx.load(program.save(tmp_path / "model.pt2"))
    torch.testing.assert_close(loaded(x), expected)
    assert torch.equal(x, before)


def test_a_refused_capture_and_prune_part_leave_the_inputs_as_found(one_thread):
    x = torch.randn(1, 3, 4, 4)
    before = x.clone()
    with pytest.raises(CaptureError):
        prunefx.capture(WritesIntoItsInput(branch=True).eval(), x)
    assert torch.equal(x, before)
    model = nn.Sequential(WritesIntoItsInput(), nn.Conv2d(4, 2, 1)).eval()
    prunefx.prune_part(model, (x,), [(prunefx.passes.remove_channels, {"macs": 0.6, "strict": False})], part="1")
    assert torch.equal(x, before)


class WritesIntoAChunkOfItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        first, second = x.chunk(2, 1)
        first.relu_()  # a view of the caller's tensor, through one item of chunk's
        return self.conv(torch.cat((first, second), 1))


def test_a_write_into_an_item_of_a_chunk_of_the_input_leaves_the_callers_tensor(one_thread, tmp_path):
    x = torch.randn(1, 4, 3, 3)
    before = x.clone()
    program = prunefx.capture(WritesIntoAChunkOfItsInput().eval(), x)
    program(x)
    assert torch.equal(x, before)
    prunefx.load(program.save(tmp_path / "model.pt2"))(x)
    assert torch.equal(x, before)


class CachedBias(nn.Module):
    """timm's LeViT attention in small: an eval-mode call stores the bias it gathers, later calls read the store."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.table = nn.Parameter(torch.randn(4, 5))
        self.register_buffer("index", torch.tensor([0, 2, 4]), persistent=False)
        self.cache: dict = {}

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.cache = {}
        return self

    def forward(self, x):
        if self.training:
            bias = self.table[:, self.index]
        else:
            bias = self.cache.setdefault("bias", self.table[:, self.index])
        return self.conv(x).mean((2, 3)) @ bias


def test_capture_reads_the_weights_not_a_cache_an_eval_call_filled_and_leaves_the_cache(one_thread):
    torch.manual_seed(0)
    model, x = CachedBias().eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model(x)  # an ordinary evaluation fills the cache
    cache, cached = model.cache, model.cache["bias"]
    program = prunefx.capture(model, x)
    assert model.cache is cache and model.cache["bias"] is cached and not model.training  # left as found
    with torch.no_grad():
        torch.testing.assert_close(prunefx.to_module(program, model)(x), model(x))
        before = program.module(x)
        dict(program.module.named_parameters())["table"].mul_(2)  # a graph reading the weights sees this
        torch.testing.assert_close(program.module(x), 2 * before)
    model.train = lambda mode=True: nn.Module.train(model, mode)  # a cache its train() keeps: still named
    with pytest.raises(prunefx.PrunefxError, match="cannot write CachedBias back.*a cache it fills"):
        prunefx.to_module(prunefx.capture(model, x), CachedBias().eval())


class FreezesOnTrain(CachedBias):
    """A train() that freezes a layer, as detection backbones freeze their first stages."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.conv.weight.requires_grad_(False)
        return self


def test_the_switch_that_drops_caches_leaves_what_train_also_changes(one_thread):
    model, x = FreezesOnTrain().eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model(x)  # fills the cache: the capture switches the model to train and back
    model.conv.weight.requires_grad_(True)  # the user unfroze it
    before = full_state(model)
    prunefx.capture(model, x)
    assert model.conv.weight.requires_grad
    assert_state_unchanged(before, model)


def test_an_override_of_train_with_no_cache_is_not_run_by_capture(one_thread):
    """Hugging Face's train() swaps kernels when the mode changes: nothing to drop, so not run for nothing."""
    calls = []

    class Counting(nn.Sequential):
        def train(self, mode: bool = True):
            calls.append(mode)
            return super().train(mode)

    model = Counting(nn.Conv2d(3, 4, 3)).eval()
    calls.clear()
    prunefx.capture(model, torch.randn(1, 3, 8, 8))
    assert calls == []


class MaskToken(nn.Module):
    """A masked-image model in small: `mask_token` is read only when a mask is passed."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(8, 32), nn.Linear(32, 4)
        self.mask_token = nn.Parameter(torch.randn(32))

    def forward(self, x, mask=None):
        hidden = self.embed(x)
        if mask is not None:
            hidden = torch.where(mask[..., None], self.mask_token, hidden)
        return self.head(torch.relu(hidden))


def test_to_module_names_a_tensor_the_captured_call_never_reads_that_keeps_a_pruned_width(one_thread):
    from prunefx.interop.unread_tensors import WriteBackWarning
    from prunefx.passes import remove_channels

    torch.manual_seed(0)
    model, x = MaskToken().eval(), torch.randn(2, 5, 8)
    program = prunefx.capture(model, x)
    remove_channels(program, config={"macs": 0.5, "importance": "l2"})
    with pytest.warns(WriteBackWarning, match="'mask_token' \\(32,\\)") as warned:
        written = prunefx.to_module(program, model)
    ours = [warning for warning in warned if issubclass(warning.category, WriteBackWarning)]  # not torch's own
    assert len(ours) == 1 and written.embed.out_features < 32 and written.mask_token.shape == (32,)
    with pytest.raises(RuntimeError):  # what the warning foretells: the masked call meets the pruned width
        written(x, torch.zeros(2, 5, dtype=torch.bool))


def _shuffling_loader(*tensors):
    from torch.utils.data import DataLoader, TensorDataset
    return DataLoader(TensorDataset(*tensors), batch_size=2, shuffle=True)


@pytest.mark.parametrize("call", ["recalibrate_batchnorm", "quantize_int8", "remove_channels"])
def test_a_pass_reading_a_shuffling_data_loader_leaves_torchs_random_state_as_found(one_thread, call):
    """A DataLoader draws its base seed from torch's generator on every iter(), shuffled or not: each pass that
    reads calibration batches puts the generator back, as distill does."""
    from prunefx import passes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 4)).eval()
    program = prunefx.capture(model, torch.randn(2, 3, 8, 8))
    loader = _shuffling_loader(torch.randn(8, 3, 8, 8))
    config = {"recalibrate_batchnorm": {"data": loader}, "quantize_int8": {"calibration": loader},
              "remove_channels": {"macs": 0.6, "round_to": 4, "calibration": loader}}[call]
    state = torch.get_rng_state()
    getattr(passes, call)(program, config=config)
    assert torch.equal(state, torch.get_rng_state())


def test_2_4_sparsity_by_cap_reading_a_shuffling_data_loader_leaves_torchs_random_state_as_found(one_thread):
    """cap reads (inputs, labels) batches for its Fisher, outside the calibration reader the other passes share."""
    from prunefx import passes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 4)).eval()
    program = prunefx.capture(model, torch.randn(2, 4, 8, 8))
    loader = _shuffling_loader(torch.randn(8, 4, 8, 8), torch.randint(0, 4, (8,)))
    state = torch.get_rng_state()
    sparse = passes.sparsify_nm(program, config={"criterion": "cap", "calibration": loader})
    assert sparse.modified and sparse.stats["layers"]
    assert torch.equal(state, torch.get_rng_state())


def test_moving_calibration_batches_to_the_device_leaves_torchs_random_state_as_found():
    """meet_budget(..., device=...) and the CLI's --device move the caller's batches before any pass reads them."""
    from prunefx.device import batches_on

    loader = _shuffling_loader(torch.randn(8, 3))
    state = torch.get_rng_state()
    moved = batches_on(loader, "cpu")
    assert len(moved) == 4 and torch.equal(state, torch.get_rng_state())


def test_to_module_runs_the_users_code_on_copies_of_the_programs_inputs(one_thread):
    """The proof runs the written-back module eagerly: a model opening with ReLU(inplace=True) must not write into
    the Program's example input (the oracle: a copy taken before)."""
    torch.manual_seed(0)
    model = nn.Sequential(WritesIntoItsInput(), nn.ReLU(), nn.Conv2d(4, 8, 1)).eval()
    pruned = prunefx.Pipeline([(prunefx.passes.remove_channels, {"channels": 0.5, "round_to": 1})]).run(
        prunefx.capture(model, torch.randn(1, 3, 4, 4))).program
    before = pruned.example_inputs[0].clone()
    assert (before < 0).any()  # what an in-place ReLU would zero
    module = prunefx.to_module(pruned, model)
    assert module[0].conv.out_channels == 2
    assert torch.equal(pruned.example_inputs[0], before)


def test_compress_leaves_a_training_mode_program_in_its_modes(one_thread, tmp_path):
    """compress runs its Program in eval mode and gives it back in the modes it came in."""
    from prunefx.compress_options import Options
    from prunefx.compression import compress
    from prunefx.data.splits import DataSplits, tensor_batches
    from prunefx.named_recipes import Recipe
    from prunefx.passes.core.recipe import pipeline_from_spec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    program = prunefx.capture(model.train(), torch.randn(2, 3, 12, 12))
    assert program.training
    images, labels = torch.randn(8, 3, 12, 12), torch.arange(8) % 4
    splits = DataSplits(train=None, val=None, test=tensor_batches(images, labels, 2, shuffle=False),
                        classes=tuple("abcd"), input_shape=(3, 12, 12))
    spec = {"name": "l2", "passes": [{"remove_channels": {"channels": 0.5, "importance": "l2", "round_to": 1}}]}
    recipe = Recipe(name="l2", path=None, spec=spec, pipeline=pipeline_from_spec(spec))
    report = compress(program, recipe, splits, tmp_path / "out", data="random",
                      options=Options(threads=1, runs=2, warmup=1, stage_reports=False), log=lambda line: None)
    assert report["macs_after"] < report["macs_before"]
    assert program.training


def test_numpy_and_array_counters_a_hook_updates_in_place_are_put_back():
    """Only containers, objects and tensors were kept: a numpy array or an array.array a hook counts calls in
    (`counts[0] += 1`) counted the export's run too. The oracle: the counts of the user's own calls."""
    import array

    import numpy as np

    in_numpy, in_array, in_object = np.zeros(1, dtype=np.int64), array.array("i", [0]), nn.Module()
    in_object.calls = np.zeros(1)  # a buffer an object holds

    def hook(module, inputs, output):
        in_numpy[0] += 1
        in_array[0] += 1
        in_object.calls += 1

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    model[0].register_forward_hook(hook)
    model(torch.randn(1, 3, 6, 6))
    prunefx.capture(model, torch.randn(1, 3, 6, 6))
    assert int(in_numpy[0]) == in_array[0] == int(in_object.calls[0]) == 1
    model(torch.randn(1, 3, 6, 6))  # the hook still counts the user's own calls
    assert int(in_numpy[0]) == in_array[0] == int(in_object.calls[0]) == 2


def test_capture_puts_back_nested_lists_deques_and_rebound_counters_its_hooks_keep(one_thread):
    """The usual ways to keep activations: a dict of lists (activations[name].append(output)), a rolling deque,
    and a call counter rebound in a closure; after capture each holds what it held, with no export tensor."""
    import collections

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    activations, recent = collections.defaultdict(list), collections.deque(maxlen=4)
    model[0].register_forward_hook(lambda module, inputs, output: activations["conv0"].append(output.detach()))
    model[1].register_forward_hook(lambda module, inputs, output: recent.append(output.detach()))
    calls = 0

    def counting(module, inputs, output):
        nonlocal calls
        calls += 1

    model[2].register_forward_hook(counting)
    x = torch.randn(1, 3, 16, 16)
    model(x)
    kept = activations["conv0"][0], recent[0]
    prunefx.capture(model, x)
    assert calls == 1 and list(activations) == ["conv0"]
    assert len(activations["conv0"]) == 1 and activations["conv0"][0] is kept[0]
    assert len(recent) == 1 and recent[0] is kept[1]
