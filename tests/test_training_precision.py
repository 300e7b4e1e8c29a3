"""Recovery training in bf16 (passes/training/precision.py): the forward passes under bfloat16 autocast follow
the float32 run closely, the weights and their gradients stay float32, and the Program given keeps every
dtype assertion of its graph. The oracle is the same run in float32."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.graph.full_float32 import full_float32
from prunefx.passes import distill
from prunefx.passes.training.engine import TrainConfig, Trainer, TrainingError
from prunefx.passes.training.precision import check_supported, without_dtype_assertions

BATCH, CLASSES = 8, 5
ASSERT_METADATA = torch.ops.aten._assert_tensor_metadata.default


class CastingNet(nn.Module):
    """A conv net whose forward casts (`.float()`): its captured graph asserts float32 before the cast."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv1(x)))
        x = torch.relu(self.conv2(x)).float()
        return self.fc(x.mean((2, 3)))


def _program(seed: int = 0):
    torch.manual_seed(seed)
    return capture(CastingNet().eval(), torch.randn(BATCH, 3, 8, 8)).eval()


def _batches(count: int = 12, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 8, 8, generator=generator), torch.randint(0, CLASSES, (BATCH,), generator=generator))
            for _ in range(count)]


def _dtype_assertions(program) -> list:
    return [node.kwargs.get("dtype") for node in program.module.graph.nodes if node.target is ASSERT_METADATA]


def _fit(program, teacher, precision: str, **options):
    config = TrainConfig(steps=12, lr=0.05, progress=False, precision=precision, **options)
    trainer = Trainer(program, teacher=teacher, data=_batches(), config=config)
    gradient_dtypes = set()
    trainer.after_backward.append(lambda t: gradient_dtypes.update(p.grad.dtype for p in t.program.module.parameters()))
    return trainer, trainer.fit(), gradient_dtypes


def _teachers():
    return {"program": lambda: _program(seed=3), "module": lambda: _eager_teacher(),
            "program with feature pairs": lambda: _program(seed=3)}


def _eager_teacher():
    torch.manual_seed(3)
    return CastingNet().eval()


@pytest.mark.parametrize("teacher_kind", list(_teachers()))
def test_bf16_training_follows_the_float32_run_and_keeps_weights_gradients_and_assertions(one_thread, teacher_kind):
    options = {"feature_losses": {"relu_1": "relu_1"}} if teacher_kind == "program with feature pairs" else {}
    runs = {}
    for precision in ("fp32", "bf16"):
        program = _program()
        assertions = _dtype_assertions(program)
        trainer, stats, gradient_dtypes = _fit(program, _teachers()[teacher_kind](), precision, **options)
        losses = [entry["loss"] for entry in trainer.log]
        assert _dtype_assertions(program) == assertions and torch.float32 in assertions  # the given graph: untouched
        assert {p.dtype for p in program.module.parameters()} == {torch.float32}
        assert gradient_dtypes == {torch.float32}
        assert stats["precision"] == precision
        runs[precision] = (losses, program)
    (fp32_losses, fp32_program), (bf16_losses, bf16_program) = runs["fp32"], runs["bf16"]
    assert bf16_losses != fp32_losses  # autocast was on: bfloat16 rounds the products
    for fp32_loss, bf16_loss in zip(fp32_losses, bf16_losses):
        assert bf16_loss == pytest.approx(fp32_loss, rel=0.05, abs=0.02)
    assert bf16_losses[-1] < bf16_losses[0]
    # both trained programs answer alike in float32, with their assertions (no autocast outside training)
    inputs = torch.randn(BATCH, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(bf16_program.module(inputs), fp32_program.module(inputs), atol=0.05, rtol=0.05)


def test_the_distill_pass_takes_bf16_from_its_config(one_thread):
    program = _program()
    result = distill(program, config={"data": _batches(), "steps": 4, "precision": "bf16", "progress": False,
                                      "teacher": _program(seed=3)})
    assert result.stats["precision"] == "bf16"
    assert torch.float32 in _dtype_assertions(result.program)


def test_an_unknown_precision_is_refused_in_words_that_list_the_choices():
    with pytest.raises(TrainingError, match=r"'precision' must be one of fp32, bf16, not 'fp16'"):
        TrainConfig(steps=1, precision="fp16")


def test_training_steps_inside_prunefx_s_full_float32_work_compute_with_the_process_s_own_settings(one_thread,
                                                                                                     monkeypatch):
    """compress and `--device` runs turn TF32 off for their work (exactness); a training step needs none, and on a
    GPU would run several times slower in full float32: it computes as the process set torch (cuDNN's TF32 on by
    default), and the block is full float32 again after it."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # the process's own: cuDNN's default
    program = _program()
    trainer = Trainer(program, teacher=None, data=_batches(), config=TrainConfig(steps=3, lr=0.05, progress=False, kd_weight=0.0))
    in_steps = []
    trainer.after_backward.append(lambda t: in_steps.append(torch.backends.cudnn.allow_tf32))
    with full_float32():
        trainer.fit()
        after_the_steps = torch.backends.cudnn.allow_tf32
    assert in_steps == [True] * 3 and after_the_steps is False and torch.backends.cudnn.allow_tf32 is True


def test_bf16_on_a_gpu_without_bfloat16_arithmetic_is_refused_and_fp32_is_not(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(TrainingError, match="Ampere or newer.*Tesla V100.*'fp32'"):
        check_supported("bf16", torch.device("cuda", 0))
    check_supported("fp32", torch.device("cuda", 0))
    check_supported("bf16", torch.device("cpu"))


def test_bf16_is_checked_on_the_gpu_trained_on_not_the_current_one(monkeypatch):
    """A machine with an A100 as GPU 0 (current) and a V100 as GPU 1: training on cuda:1 is refused bf16."""
    current = [0]

    @contextlib.contextmanager
    def device(index):
        before, current[0] = current[0], torch.device(index).index
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: current[0] == 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(TrainingError, match="Tesla V100"):
        check_supported("bf16", torch.device("cuda", 1))
    check_supported("bf16", torch.device("cuda", 0))
    assert current == [0]


def test_dtype_assertions_given_by_position_or_by_name_lose_their_dtype_and_keep_the_rest():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.call_function(ASSERT_METADATA, (x, None, None, torch.float32))
    graph.call_function(ASSERT_METADATA, (x, [2]), {"dtype": torch.float32})
    graph.output(graph.call_function(torch.ops.aten.relu.default, (x,)))
    module = torch.fx.GraphModule(nn.Module(), graph)
    with pytest.raises(RuntimeError, match="dtype"):
        module(torch.ones(2, dtype=torch.bfloat16))
    assert without_dtype_assertions(module) == 2 and without_dtype_assertions(module) == 0
    assert module(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(RuntimeError):  # the size is still checked
        module(torch.ones(3, dtype=torch.bfloat16))


@pytest.mark.gpu
def test_bf16_training_on_a_gpu_follows_the_float32_run():
    if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("needs a CUDA GPU with bfloat16 arithmetic")
    runs = {}
    for precision in ("fp32", "bf16"):
        program, teacher = _program(), _program(seed=3)
        config = TrainConfig(steps=12, lr=0.05, progress=False, precision=precision, device="cuda")
        trainer = Trainer(program, teacher=teacher, data=_batches(), config=config)
        trainer.fit()
        runs[precision] = [entry["loss"] for entry in trainer.log]
        assert {p.device.type for p in program.module.parameters()} == {"cpu"}  # given back where it was
    assert runs["bf16"] != runs["fp32"]
    assert runs["bf16"] == pytest.approx(runs["fp32"], rel=0.05, abs=0.02)


def test_a_teacher_module_run_under_autocast_is_left_as_found(one_thread):
    teacher = _eager_teacher()
    state = copy.deepcopy(teacher.state_dict())
    _fit(_program(), teacher, "bf16")
    assert all(torch.equal(value, state[key]) for key, value in teacher.state_dict().items())
    assert not teacher.training
