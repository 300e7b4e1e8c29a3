"""Tensors a pass makes from nothing (a missing bias, a zero point, a Fisher sum) land on the model's device.

A CPU tensor made without `device=` and combined with a cuda model's tensors fails on first contact there. On a
CPU the same mistake is found by making such tensors elsewhere: under `_MadeOnMeta`, zeros/ones/eye/arange/...
called without a device give meta tensors, so a pass that mixes one with the model's CPU tensors fails as it
would on cuda, while a pass that places what it makes runs unchanged. The oracle is the pass's own CPU run
without the mode. The GPU tests run the passes on cuda against that CPU run.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunefx.graph import Program, capture
from prunefx.graph.channels.importance import FisherAccumulator
from prunefx.graph.placement import move_program
from prunefx.passes.fold_batchnorm import fold_batchnorm
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.sparsify_nm import sparsify_nm

pytestmark = pytest.mark.usefixtures("one_thread")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
CLASSES = 8


class _MadeOnMeta(TorchFunctionMode):
    """Tensors made from sizes alone, without a device, are made on the meta device. (Not torch.device("meta"):
    that also moves `as_tensor` of existing tensors and host scalars, which are right where they are.)"""

    MAKERS = {torch.empty, torch.zeros, torch.ones, torch.full, torch.eye, torch.arange, torch.linspace, torch.rand,
              torch.randn, torch.randint}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.MAKERS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _net() -> nn.Module:
    """Convs without biases before batch norms, one of them without affine parameters: folding makes all three."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, affine=False), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return net.eval()


def _program():
    return capture(_net(), torch.randn(2, 3, 8, 8), name="net").eval()


def _calibration(labelled: bool = False) -> list:
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(2)]
    return [(x, torch.randint(0, CLASSES, (2,), generator=generator)) for x in images] if labelled else images


def _same_outputs(first, second) -> None:
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(first.module(x), second.module(x))


def test_folding_makes_missing_biases_and_affine_parameters_beside_the_weights():
    plain, program = fold_batchnorm(_program()).program, _program()
    with _MadeOnMeta():
        placed = fold_batchnorm(program).program
    _same_outputs(plain, placed)


def test_int8_zero_points_are_made_beside_the_weights():
    config = {"calibration": _calibration(), "method": "percentile"}
    plain, program = quantize_int8(_program(), config=config).program, _program()
    with _MadeOnMeta():
        placed = quantize_int8(program, config=config).program
    _same_outputs(plain, placed)
    zero_points = [t for name, t in placed.module.named_buffers() if name.endswith("zero_point")]
    assert zero_points and all(t.device.type == "cpu" for t in zero_points)


def test_fisher_scores_accumulate_where_the_gradients_are():
    """Gradients on the meta device: the sums stay there (no copy to the host after every step, which on cuda
    waits for the device), and reach the host only when read."""
    program = _program()
    module = copy.deepcopy(program.module).to("meta")
    for parameter in module.parameters():
        parameter.grad = torch.ones_like(parameter)
    fisher = FisherAccumulator(module)
    fisher.accumulate()
    fisher.accumulate()
    assert fisher.sums and all(s.device.type == "meta" and s.dtype == torch.float64 for s in fisher.sums.values())


def test_a_step_with_non_finite_gradients_adds_nothing_to_the_fisher_scores():
    """A mixed-precision overflow (the optimizer skips that step too) must not make scores inf or NaN for good.
    The oracle: the sums of the finite steps alone."""
    module = copy.deepcopy(_program().module)

    def step(fisher, fill):
        for parameter in module.parameters():
            parameter.grad = torch.full_like(parameter, fill)
        fisher.accumulate()

    finite, mixed = FisherAccumulator(module), FisherAccumulator(module)
    step(finite, 1.0), step(finite, 2.0)
    step(mixed, 1.0), step(mixed, float("inf")), step(mixed, 2.0)
    assert mixed.sums.keys() == finite.sums.keys()
    assert all(torch.equal(mixed.sums[key], finite.sums[key]) for key in finite.sums)


def test_gradients_at_a_loss_scale_add_what_the_unscaled_ones_add():
    """Ultralytics reads its AMP gradients for the Fisher scores before unscaling them: at a scale S they are S times
    the loss's, so a step before the scaler halved S counted four times one after it. The oracle: the same steps'
    gradients at scale 1."""
    module = copy.deepcopy(_program().module)

    def step(fisher, fill, scale):
        for parameter in module.parameters():
            parameter.grad = torch.full_like(parameter, fill * scale)
        fisher.accumulate(loss_scale=scale)

    unscaled, scaled = FisherAccumulator(module), FisherAccumulator(module)
    step(unscaled, 1.0, 1.0), step(unscaled, 2.0, 1.0)
    step(scaled, 1.0, 65536.0), step(scaled, 2.0, 32768.0)
    assert all(torch.allclose(scaled.sums[key], unscaled.sums[key], rtol=1e-12) for key in unscaled.sums)


# --- on a GPU ------------------------------------------------------------------------------------------------

def _close(cpu_program, cuda_program, tolerance: float, name: str) -> None:
    x = torch.randn(2, 3, 8, 8)
    expected = cpu_program.module(x)
    got = move_program(cuda_program, "cpu").module(x)  # with the devices its graph names
    assert float((got - expected).abs().max()) <= tolerance * float(expected.abs().max()), name


@pytest.mark.gpu
@requires_cuda
def test_folding_quantizing_and_cap_sparsity_on_cuda_match_the_cpu_run(monkeypatch):
    """Each pass on a cuda Program against the same pass on the CPU (TF32 off: float32 on both sides)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    runs = {"fold": (fold_batchnorm, {}, 1e-5),
            "int8": (quantize_int8, {"calibration": _calibration(), "method": "percentile"}, 5e-2),
            "cap": (sparsify_nm, {"pattern": "unstructured", "sparsity": 0.5, "criterion": "cap",
                                  "calibration": _calibration(labelled=True)}, 1e-3)}
    for name, (run, config, tolerance) in runs.items():
        cpu = run(_program(), config=config).program
        cuda = run(move_program(_program(), "cuda"), config=config).program
        _close(cpu, cuda, tolerance, name)


@pytest.mark.gpu
@requires_cuda
def test_a_program_saved_on_cuda_loads_on_the_cpu_and_computes_the_same(tmp_path, monkeypatch):
    """torch.export.save writes each tensor's device and load puts it back there: a file saved from the GPU
    has to be the CPU's, or it loads nowhere without a GPU (and, with one, on mixed devices)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    on_cuda = move_program(_program(), "cuda")
    loaded = Program.load(on_cuda.save(tmp_path / "model.pt2"))
    assert all(t.device.type == "cpu" for t in (*loaded.module.state_dict().values(), *loaded.example_inputs))
    assert all(t.device.type == "cuda" for t in on_cuda.module.state_dict().values())  # the saved one stays
    x = torch.randn(2, 3, 8, 8)
    expected = on_cuda.module(x.cuda()).cpu()
    assert float((loaded.module(x) - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


@pytest.mark.gpu
@requires_cuda
def test_gradient_importance_and_every_int8_method_on_cuda_match_the_cpu_run(monkeypatch):
    """Taylor and Fisher scores (a backward on the device) and INT8's max, mse and entropy ranges on a cuda Program
    against the CPU run: the same widths (local ranking: each group keeps the same fraction) and, for INT8,
    outputs within 5 % of their largest magnitude."""
    from prunefx.passes.remove_channels import remove_channels

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for importance in ("taylor", "fisher"):
        config = {"macs": 0.5, "importance": importance, "ranking": "local", "round_to": 1,
                  "calibration": _calibration(labelled=True)}
        cpu = remove_channels(_program(), config=config).program
        cuda = remove_channels(move_program(_program(), "cuda"), config=config).program
        shapes = [tuple(t.shape) for t in cpu.module.state_dict().values()]
        assert shapes == [tuple(t.shape) for t in cuda.module.state_dict().values()], importance
        assert shapes != [tuple(t.shape) for t in _program().module.state_dict().values()]
    for method in ("max", "mse", "entropy"):
        config = {"calibration": _calibration(), "method": method}
        cpu = quantize_int8(_program(), config=config).program
        cuda = quantize_int8(move_program(_program(), "cuda"), config=config).program
        _close(cpu, cuda, 5e-2, method)
