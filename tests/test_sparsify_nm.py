"""sparsify_nm (N:M sparsity, magnitude / OBS / CAP) on real models, masked recovery, the GPU path
(the tensor math is tested in test_nm_masks.py).

The pattern is checked on real models twice: on the Program's weights and, independently, on the
initializers of the exported ONNX file (numpy, grouping done here, not by prunefx)."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from onnx import numpy_helper

from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.compression import inject
from prunefx.data.fashion_mnist import MEAN, STD, DatasetError, load_fashion_mnist
from prunefx.data.splits import DataSplits, tensor_batches
from prunefx.graph import PrunefxError, capture
from prunefx.graph.attributes import get_tensor
from prunefx.graph.program import Program
from prunefx.graph.sparsity.nm_hessians import find_sparse_layers, grouped_weight, layer_hessians
from prunefx.graph.sparsity.nm_masks import Pattern, pattern_violations, relative_output_error
from prunefx.models import build_model
from prunefx.named_recipes import RECIPES_DIR
from prunefx.passes.core.recipe import load_recipe, pipeline_from_spec
from prunefx.passes.core.registry import get_pass
from prunefx.passes.distill import distill
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.rewrites.sparse_masks import SparseMasks
from prunefx.passes.sparsify_nm import sparsify_nm
from prunefx.passes.sparsity.config import SparsityError
from prunefx.runtime import export_onnx
from prunefx.runtime.cuda.semi_structured import (
    SemiStructuredUnavailable,
    cuda_graphed,
    semi_structured,
    time_linear,
    two_four,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TWO_FOUR = Pattern(2, 4)


# --- an independent check of exported weights -----------------------------------------------------------

def _obeys_two_four(matrix: np.ndarray) -> bool:
    """matrix [outputs, inputs, *taps]: every 4 consecutive inputs of every output and tap hold <= 2 non-zeros."""
    if matrix.shape[1] % 4:
        return False
    moved = np.moveaxis(matrix, 1, -1)  # [K, *taps, C]
    groups = moved.reshape(*moved.shape[:-1], matrix.shape[1] // 4, 4)
    return bool(((groups != 0).sum(-1) <= 2).all())


def _onnx_layer_weights(path) -> list[np.ndarray]:
    """Every Conv / Gemm / MatMul weight initializer of an ONNX file as [outputs, inputs, ...]."""
    model = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in initializers:
            continue
        weight = initializers[node.input[1]]
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        weights.append(weight if node.op_type == "Conv" or transposed else weight.T)  # Gemm/MatMul B: [in, out]
    return weights


def _check_exported(program: Program, tmp_path) -> None:
    """Every recorded weight is in the ONNX file (batch norms may be folded into it: values scaled per
    output channel, so it is found by its zeros) and obeys 2:4 there; no other exported weight does."""
    exported = _onnx_layer_weights(export_onnx(program, tmp_path / f"{program.name}.onnx").path)
    recorded = program.analysis.sparsity.weights
    for name in recorded:
        zeros = get_tensor(program.module, name).detach().numpy() == 0
        matches = [w for w in exported if w.shape == zeros.shape and np.array_equal(w == 0, zeros)]
        assert matches, f"{name} not found among the exported weights"
        assert _obeys_two_four(matches[0]), f"{name} breaks 2:4 in the ONNX file"
    sparse = [w for w in exported if (w == 0).mean() >= 0.5 and _obeys_two_four(w)]
    assert len(sparse) == len(recorded) > 0


def _check_program(program: Program, layers_expected: int) -> None:
    record = program.analysis.sparsity
    assert len(record.weights) == layers_expected
    for name in record.weights:
        weight = get_tensor(program.module, name).detach()
        assert pattern_violations(weight, TWO_FOUR) == 0
        assert _obeys_two_four(weight.numpy())
        assert float((weight == 0).double().mean()) >= 0.5


# --- the pass on real models ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return capture(torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 64, 64), name="resnet18")


@pytest.mark.slow  # 5-10 s, most of it the ONNX export
def test_resnet18_every_eligible_layer_obeys_two_four_in_torch_and_onnx(resnet18, tmp_path):
    program = resnet18.clone()
    result = sparsify_nm(program, config={"pattern": "2:4"})
    assert result.modified and result.stats["layers_changed"] == 20
    _check_program(program, 20)  # 19 convolutions + fc; conv1 reads 3 channels
    assert [s["weight"] for s in result.stats["skipped"]] == ["conv1.weight"]
    assert "not a multiple of 4" in result.stats["skipped"][0]["reason"]
    _check_exported(program, tmp_path)
    loaded = Program.load(program.save(tmp_path / "sparse.pt2"))  # the record is saved with the program
    assert loaded.analysis.sparsity.weights == program.analysis.sparsity.weights
    assert loaded.analysis.sparsity.pattern == "2:4"
    assert not sparsify_nm(loaded, config={"pattern": "2:4"}).modified  # already 2:4: nothing to do


@pytest.mark.slow  # 5-10 s, most of it the ONNX export
def test_deit_tiny_linear_layers_obey_two_four_in_torch_and_onnx(tmp_path):
    spec = build_model("timm:deit_tiny_patch16_224", image_size=32)
    program = capture(spec.module, torch.randn(1, 3, 32, 32), name="deit_tiny")
    sparsify_nm(program, config={"pattern": "2:4"})
    _check_program(program, 49)  # 12 blocks x (qkv, proj, fc1, fc2) + head
    _check_exported(program, tmp_path)


def test_all_ones_masks_are_exact(resnet18):
    program = resnet18.clone()
    before = program.run_example()
    chosen = ["layer1.0.conv1.weight", "fc.weight"]
    result = sparsify_nm(program, config={"pattern": "4:4", "criterion": "obs", "layers": chosen})
    assert result.stats["weights"] == chosen and not result.modified  # OBS with nothing to prune updates nothing
    result = sparsify_nm(program, config={"pattern": "4:4"})
    assert not result.modified and result.stats["layers_changed"] == 0 and len(result.stats["weights"]) == 20
    assert torch.equal(program.run_example(), before)


@pytest.fixture(scope="module")
def mobilenet():
    """torchvision's ImageNet MobileNetV2 and the 20 ImageNet sample images: real weights, real activations."""
    try:
        weights_path = mobilenet_v2_weights_path()
        images, labels = load_imagenet_batch(160)
    except PrunefxError as error:
        pytest.skip(f"offline ImageNet assets missing: {error}")
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    return capture(model.eval(), images[:10], name="mobilenet_v2").eval(), images, labels


def test_eligibility_reasons_on_mobilenet(mobilenet):
    program, _, _ = mobilenet
    layers, skipped = find_sparse_layers(program.module, pattern=TWO_FOUR, keep={"classifier.1.weight"},
                                         min_channels=24)
    reasons = {s["weight"]: s["reason"] for s in skipped}
    assert "not a multiple of 4" in reasons["features.0.0.weight"]
    assert reasons["features.1.conv.0.0.weight"].startswith("depthwise convolution (groups=32)")
    assert sum(r.startswith("depthwise") for r in reasons.values()) == 17
    assert reasons["classifier.1.weight"] == "kept dense by the 'keep' option"
    assert reasons["features.1.conv.1.weight"].startswith("too few channels (32 in, 16 out; min_channels=24)")
    assert all(layer.shape[1] % 4 == 0 and min(layer.shape[:2]) >= 24 for layer in layers)
    assert len(layers) + len(skipped) == 53  # every convolution and linear layer is accounted for


def test_obs_and_cap_reconstruct_layer_outputs_better_than_magnitude(mobilenet):
    """Relative layer-output error on held-out images (not the calibration ones), summed over 6 real
    pointwise layers: OBS at most half, CAP at most 80 % of magnitude's, and every layer below it."""
    program, images, labels = mobilenet
    layers, _ = find_sparse_layers(program.module, pattern=TWO_FOUR)
    chosen = layers[2:14:2]
    names = [layer.node for layer in chosen]
    held_out = {layer.node: h for layer, h in layer_hessians(program.module, chosen, [(images[10:],)])}
    errors = {}
    for criterion in ("magnitude", "obs", "cap"):
        sparse = program.clone()
        sparsify_nm(sparse, config={"criterion": criterion, "layers": names, "calibration": [(images[:10], labels[:10])],
                                    "sequential": False})
        errors[criterion] = [relative_output_error(grouped_weight(program.module, layer),
                                                   grouped_weight(sparse.module, layer), held_out[layer.node])
                             for layer in chosen]
    assert all(o < m and c < m for o, c, m in zip(errors["obs"], errors["cap"], errors["magnitude"])), errors
    assert sum(errors["obs"]) < 0.5 * sum(errors["magnitude"]), errors
    assert sum(errors["cap"]) < 0.8 * sum(errors["magnitude"]), errors


def test_unstructured_cap_meets_the_target_with_uneven_layers(mobilenet):
    program, images, labels = mobilenet
    layers, _ = find_sparse_layers(program.module, pattern=None)
    names = [layer.node for layer in layers[3:7]]
    result = sparsify_nm(program.clone(), config={"pattern": "unstructured", "sparsity": 0.6, "criterion": "cap",
                                                  "layers": names, "calibration": [(images[:10], labels[:10])]})
    assert result.stats["zero_fraction"] == pytest.approx(0.6, abs=0.01)
    fractions = [layer["zero_fraction"] for layer in result.stats["layers"]]
    assert max(fractions) - min(fractions) > 0.05  # one loss threshold, not one ratio per layer


# --- masked recovery --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fashion_batches():
    try:
        pixels, labels = load_fashion_mnist("test")
    except DatasetError as error:
        pytest.skip(f"Fashion-MNIST is not installed: {error}")
    images = ((pixels[:64].float() / 255 - MEAN) / STD).unsqueeze(1)
    return [(images[i:i + 16], labels[i:i + 16].long()) for i in range(0, 64, 16)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")])])
def test_masks_survive_distillation(fashion_batches, device):
    """On a GPU too: the masks, made on the CPU, are applied to the weights the trainer moved there."""
    torch.manual_seed(0)
    program = capture(build_model("prunefx:resnet20").module, fashion_batches[0][0], name="resnet20")
    sparsify_nm(program, config={"criterion": "magnitude"})
    names = program.analysis.sparsity.weights
    zeros = {name: get_tensor(program.module, name).detach() == 0 for name in names}
    before = {name: get_tensor(program.module, name).detach().clone() for name in names}
    result = distill(program, config={"data": fashion_batches, "steps": 4, "lr": 0.05, "kd_weight": 0.5,
                                      "progress": False, "device": device})
    trained = result.program
    for name in names:
        weight = get_tensor(trained.module, name).detach()
        assert weight.device.type == "cpu", name  # trained where asked, handed back where it was
        assert torch.equal(weight == 0, zeros[name]), name  # the same zeros, exactly
    assert any(not torch.equal(get_tensor(trained.module, n).detach(), before[n]) for n in names)  # it trained


def test_masks_are_taken_again_when_the_trainer_program_changes(resnet18):
    program = resnet18.clone()
    sparsify_nm(program, config={"layers": ["fc.weight"]})
    hook = SparseMasks(program)
    replacement = program.clone()

    class FakeTrainer:
        pass

    trainer = FakeTrainer()
    trainer.program = replacement
    hook.after_backward(trainer)  # a new program: masks from its (still sparse) weights
    with torch.no_grad():
        get_tensor(replacement.module, "fc.weight").add_(1.0)  # an optimizer step moves every weight
    hook.after_step(trainer, 1)
    assert pattern_violations(get_tensor(replacement.module, "fc.weight"), TWO_FOUR) == 0


def test_keeping_the_zeros_reads_nothing_back_to_the_host(resnet18, monkeypatch):
    """Run after every optimizer step: a count read back with int() or item() waits for a GPU to finish."""
    program = resnet18.clone()
    sparsify_nm(program, config={"layers": ["fc.weight"]})
    hook = SparseMasks(program)
    with torch.no_grad():
        get_tensor(program.module, "fc.weight").add_(1.0)

    def synchronises(*_):
        raise AssertionError("a value was read back to the host")

    for reader in ("__int__", "__bool__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, reader, synchronises)
    hook.apply(program)
    monkeypatch.undo()
    assert pattern_violations(get_tensor(program.module, "fc.weight"), TWO_FOUR) == 0


@pytest.mark.parametrize("rewrite, config", [
    ("remove_channels", {"macs": 0.6}),
    ("prune_while_training", {"macs": 0.6, "steps": 2, "prune_events": 1, "interval": 1, "data": [(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))]}),
    ("merge_blocks", {}),
])
def test_a_rewrite_that_would_move_the_zeros_off_the_pattern_is_refused_before_any_work(resnet18, rewrite, config):
    """Slicing input channels shifts every 2:4 group after the cut (and compensation fills the zeros); merging
    multiplies kernels into dense ones. The Program would still record its weights as sparse."""
    from prunefx.passes import merge_blocks, prune_while_training, remove_channels

    program = sparsify_nm(resnet18.clone(), config={"layers": ["layer1.0.conv1.weight"]}).program
    before = {name: tensor.clone() for name, tensor in program.state_dict().items()}
    passes = {"remove_channels": remove_channels, "prune_while_training": prune_while_training,
              "merge_blocks": merge_blocks}
    with pytest.raises(PrunefxError, match=f"{rewrite}: 1 weights of 'resnet18' are 2:4 sparse .* run sparsify_nm "
                                           f"after {rewrite}"):
        passes[rewrite](program, config=config)
    assert all(torch.equal(before[name], tensor) for name, tensor in program.state_dict().items())


def test_a_second_run_over_other_layers_keeps_the_first_runs_weights_recorded(resnet18):
    """The record was replaced by each run: distill stopped keeping the first run's zeros, and a run that sparsified
    nothing (an M:M pattern, or no layer eligible) let remove_channels prune a 2:4 model. The oracle: the zeros
    in the weights themselves."""
    from prunefx.passes import remove_channels
    from prunefx.passes.rewrites.sparse_masks import SparseMasks

    program = sparsify_nm(resnet18.clone(), config={"layers": ["layer1.0.conv1.weight", "fc.weight"]}).program
    sparsify_nm(program, config={"pattern": "4:8", "layers": ["layer2.0.conv1.weight"]})
    record = program.analysis.sparsity
    assert record.weights == ["layer1.0.conv1.weight", "fc.weight", "layer2.0.conv1.weight"]
    assert record.pattern == "2:4 and 4:8" and [layer["weight"] for layer in record.layers] == record.weights
    masks = SparseMasks(program).masks
    assert all(not bool(masks[name].all()) for name in record.weights)  # every recorded weight holds zeros
    sparsify_nm(program, config={"pattern": "4:4", "layers": ["layer3.0.conv1.weight"]})  # removes nothing
    assert program.analysis.sparsity.weights == record.weights
    with pytest.raises(PrunefxError, match="3 weights of 'resnet18' are 2:4 and 4:8 sparse"):
        remove_channels(program, config={"macs": 0.6})
    dense = sparsify_nm(resnet18.clone(), config={"pattern": "4:4"}).program  # M:M: no zero to keep
    assert dense.analysis.sparsity.weights == []
    assert remove_channels(dense, config={"macs": 0.6}).modified


# --- configuration, registry, recipe ------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"colour": 1}, "unknown option"),
    ({"pattern": "3:4", "criterion": "foo"}, "'criterion' must be one of"),
    ({"pattern": "2:3"}, "pattern '2:3'"),
    ({"pattern": "unstructured"}, "needs 'sparsity'"),
    ({"sparsity": 0.5}, "goes with pattern 'unstructured'"),
    ({"pattern": "unstructured", "sparsity": 0.5, "criterion": "obs"}, "not obs"),
    ({"block_size": 6}, "multiple of 4"),
    ({"criterion": "cap"}, "needs 'calibration'"),
    ({"criterion": "cap", "calibration": [torch.randn(1, 3, 64, 64)]}, "(inputs, int64 labels)"),
    ({"criterion": "obs", "calibration": [torch.randn(2, 3, 64, 64)]}, "captured for"),
    ({"criterion": "cap", "damping": 0, "calibration": [(torch.randn(1, 3, 64, 64), torch.tensor([1]))]}, "> 0"),
    ({"keep": "fc"}, "list of node or weight names"),
    ({"keep": ["fc.wieght"]}, "'keep' names 'fc.wieght', which is not a node or weight of .*; did you mean fc.weight"),
    ({"layers": ["conv2d_99"]}, "'layers' names 'conv2d_99', which is not a node or weight of"),
])
def test_bad_configs_are_clear_errors(resnet18, config, message):
    with pytest.raises(PrunefxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sparsify_nm(resnet18.clone(), config=config)
    assert issubclass(SparsityError, PrunefxError)


def test_a_quantized_model_is_refused_with_the_order_to_take(resnet18):
    # after quantize_int8 every weight is read through its INT8 fake quantizer: none would be sparsified, silently
    quantized = quantize_int8(resnet18.clone(), config={"calibration": [torch.randn(1, 3, 64, 64)]}).program
    with pytest.raises(SparsityError, match="already quantized; sparsify first, then quantize_int8"):
        sparsify_nm(quantized)


def test_registered_shipped_as_a_recipe_and_given_labelled_calibration_by_compress():
    assert get_pass("sparsify_nm") is sparsify_nm
    pipeline = load_recipe(RECIPES_DIR / "sparsify-2of4-kd.yaml")
    assert [step.name for step in pipeline.steps] == ["sparsify_nm", "distill"]
    images, labels = torch.randn(24, 3, 8, 8), torch.arange(24) % 4
    splits = DataSplits(train=tensor_batches(images, labels, 4, shuffle=True), val=None,
                        test=tensor_batches(images, labels, 4, shuffle=False), classes=tuple("abcd"),
                        input_shape=(3, 8, 8))
    dense = capture(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16)).eval(), images[:4])
    steps = pipeline_from_spec({"passes": [{"sparsify_nm": {}}, {"sparsify_nm": {"criterion": "cap"}}]})
    injected, keys = inject(steps, dense, splits, data="random")
    assert keys == [[], ["calibration"]]  # magnitude reads no data
    calibration = injected.steps[1].config["calibration"]
    assert all(len(batch) == 2 and batch[1].dtype == torch.int64 for batch in calibration)  # with labels
    assert sparsify_nm(dense, config=injected.steps[1].config).stats["calibration_images"] == 4 * len(calibration)


# --- GPU ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_semi_structured_without_cuda_is_a_clear_error():
    with pytest.raises(SemiStructuredUnavailable, match="needs a CUDA GPU"):
        semi_structured(torch.randn(64, 64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with sparse tensor cores")
def test_a_graph_replay_of_a_sparse_linear_computes_what_dense_does_on_new_inputs():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("sparse tensor cores need compute capability 8.0+")
    weight = two_four(torch.randn(256, 128)).cuda().half()
    sparse, x, out = semi_structured(weight), torch.randn(512, 128, device="cuda", dtype=torch.half), {}

    def call():
        out["y"] = F.linear(x, sparse)  # captured once: a replay rewrites this tensor in place

    replay = cuda_graphed(call)
    x.copy_(torch.randn_like(x))  # the replay must read the input's current values, not the captured ones
    replay()
    torch.cuda.synchronize()
    expected = F.linear(x, weight)
    assert (out["y"] - expected).abs().max() < 1e-2 * expected.abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with sparse tensor cores")
def test_semi_structured_linear_matches_dense_and_is_timed():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("sparse tensor cores need compute capability 8.0+")
    timing = time_linear(torch.randn(1536, 384), 64 * 197, warmup=3, runs=5)
    # the two kernels sum in different orders: fp16 rounding, a few units of 2**-10 of the largest output
    assert timing.relative_difference < 1e-2 and timing.dense.median_ms > 0 and timing.sparse.median_ms > 0


class _ScaledWeight(torch.nn.Module):
    """A stored convolution beside one whose weight the graph computes (weight * gain)."""

    def __init__(self):
        super().__init__()
        self.stored, self.scaled = torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1)
        self.gain = torch.nn.Parameter(torch.full((32, 1, 1, 1), 2.0))

    def forward(self, x):
        return F.conv2d(self.stored(x), self.scaled.weight * self.gain, self.scaled.bias, padding=1)


def test_a_layer_whose_weight_the_graph_computes_is_listed_as_skipped_with_its_reason():
    torch.manual_seed(0)
    program = capture(_ScaledWeight().eval(), torch.randn(1, 32, 8, 8))
    stats = sparsify_nm(program, config={"pattern": "2:4"}).stats
    assert stats["weights"] == ["stored.weight"]
    assert [entry["node"] for entry in stats["skipped"]] == ["conv2d_1"]
    assert "computed in the graph" in stats["skipped"][0]["reason"]
