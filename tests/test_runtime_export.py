"""runtime: ONNX export (dynamo and TorchScript fallback), graph-surgeon cleanup, ONNX Runtime, parity."""

import contextlib
import importlib

import numpy as np
import onnx
import pytest
import torch
import torchvision

from prunefx.cli import main
from prunefx.graph import PrunefxError, capture
from prunefx.runtime import (
    OnnxExportError,
    OnnxRuntimeSession,
    OnnxSessionError,
    check_parity,
    export_onnx,
)
from prunefx.runtime.onnx.export_memo import forget_written

TOLERANCE = 1e-4


class TinyNet(torch.nn.Module):
    """conv-bn-relu, pooling and two heads returned as a dict, like a segmentation model."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        features = torch.relu(self.bn(self.conv(x)))
        pooled = self.drop(features.mean(dim=(2, 3)))
        return {"logits": self.head(pooled), "features": features}


def tiny_program(*, training=False):
    torch.manual_seed(0)
    model = TinyNet().train(training)
    with torch.no_grad():  # non-trivial statistics, so that train and eval batch norm differ
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return capture(model, torch.randn(2, 3, 16, 16), name="tiny")


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    program = capture(model, torch.randn(1, 3, 64, 64), name="resnet18")
    return program, export_onnx(program, tmp_path_factory.mktemp("onnx") / "resnet18.onnx")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    program = tiny_program()
    return program, export_onnx(program, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.parametrize("case", ["resnet18", "tiny"])
def test_dynamo_export_matches_torch(case, request):
    program, result = request.getfixturevalue(case)
    assert result.exporter == "dynamo" and result.fallback_reason is None
    parity = check_parity(program, result.path)
    assert parity.relative < TOLERANCE, parity
    assert parity.output_scale > 0
    # Fresh inputs too, not only the ones the model was exported on.
    other = (torch.randn_like(program.example_inputs[0]),)
    assert check_parity(program, result.path, other).relative < TOLERANCE


def test_check_parity_refuses_zero_threads_rather_than_reading_the_default(tiny):
    program, result = tiny
    with pytest.raises(PrunefxError, match="threads must be an integer from 1"):
        check_parity(program, result.path, threads=0)


@pytest.mark.parametrize("case", ["resnet18", "tiny"])
def test_exported_file_is_checked_single_and_clean(case, request):
    _, result = request.getfixturevalue(case)
    onnx.checker.check_model(str(result.path))
    model = onnx.load(result.path)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert [p.name for p in result.path.parent.iterdir() if p.name.startswith(result.path.name)] == [
        result.path.name]
    assert 0 < result.node_count <= result.raw_node_count
    assert result.node_count == len(model.graph.node)
    assert [i.name for i in model.graph.input] == ["input_0"]


def test_dict_outputs_are_flattened_in_order(tiny):
    program, result = tiny
    parity = check_parity(program, result.path)
    assert [o.name for o in parity.outputs] == ["output_0", "output_1"]
    assert [o.shape for o in parity.outputs] == [(2, 4), (2, 8, 16, 16)]  # logits, then features


class Anchored(torch.nn.Module):
    """A detection head that returns its anchors (a buffer) and their scaled copy (folded to a constant)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.register_buffer("anchors", torch.rand(36, 4))

    def forward(self, x):
        return self.conv(x), self.anchors, self.anchors * 8.0


def test_a_weight_the_model_returns_is_exported_by_dynamo(tmp_path):
    program = capture(Anchored().eval(), torch.randn(1, 3, 8, 8))
    result = export_onnx(program, tmp_path / "anchored.onnx")
    assert result.exporter == "dynamo"  # not a fallback: the weight kept apart was renamed output_1
    parity = check_parity(program, result.path, threads=1)
    assert [o.name for o in parity.outputs] == ["output_0", "output_1", "output_2"] and parity.within(TOLERANCE)
    written = onnx.numpy_helper.to_array(next(tensor for tensor in onnx.load(result.path).graph.initializer
                                              if tensor.name == "output_1"))
    assert np.array_equal(written, program.module.anchors.numpy())


class ZeroPaddedPool(torch.nn.Module):
    """BiT's stem (timm resnetv2): a convolution, a zero ConstantPad2d and a MaxPool, on signed values."""

    def __init__(self):
        super().__init__()
        self.conv, self.pad, self.pool = torch.nn.Conv2d(3, 8, 3), torch.nn.ConstantPad2d(1, 0.0), torch.nn.MaxPool2d(3, 2)

    def forward(self, x):
        return self.pool(self.pad(self.conv(x)))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_zero_pad_before_a_max_pool_computes_the_same_on_onnx_runtime(tmp_path, exporter):
    """ONNX Runtime's Pad fusion folds a zero Pad into the MaxPool after it, which pads with -inf: 0.1 off here."""
    torch.manual_seed(0)
    program = capture(ZeroPaddedPool().eval(), torch.randn(1, 3, 16, 16))
    result = export_onnx(program, tmp_path / "stem.onnx", exporter=exporter)
    x = torch.randn(1, 3, 16, 16)  # not the example input: the file computes, it does not replay
    got = OnnxRuntimeSession(result.path, threads=1).run(x)[0]  # ONNX Runtime's default optimisations, as deployed
    want = program.module(x).detach().numpy()
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_a_file_further_from_torch_than_an_exact_export_is_said_in_export(tmp_path, monkeypatch, capsys):
    """Without the Pad rewrite ONNX Runtime's fusion leaves the stem 0.1 off: the command says so, not only the
    figure."""
    monkeypatch.setattr(importlib.import_module("prunefx.runtime.onnx.cleanup"), "guard_zero_pads_before_max_pools",
                        lambda graph: 0)
    factory = tmp_path / "stem.py"
    factory.write_text("import torch\n\ndef net():\n    torch.manual_seed(0)\n    return torch.nn.Sequential("
                       "torch.nn.Conv2d(3, 8, 3), torch.nn.ConstantPad2d(1, 0.0), torch.nn.MaxPool2d(3, 2))\n")
    assert main(["export", f"{factory}:net", "--input-shape", "1x3x16x16", "-o", str(tmp_path / "stem.onnx")]) == 0
    err = capsys.readouterr().err
    assert "stem.onnx computes" in err and "away from the PyTorch model on ONNX Runtime" in err, err


def test_fallback_to_torchscript_when_dynamo_fails(monkeypatch, tmp_path):
    original = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo failure\nwith a long traceback")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    program = tiny_program()
    result = export_onnx(program, tmp_path / "tiny.onnx")
    assert result.exporter == "torchscript"
    assert result.fallback_reason == "RuntimeError: simulated dynamo failure"
    assert check_parity(program, result.path).relative < TOLERANCE
    names = [o.name for o in onnx.load(result.path).graph.output]
    assert names == ["output_0", "output_1"]


def test_both_exporters_failing_names_the_model(monkeypatch, tmp_path):
    def always_breaks(*args, **kwargs):
        raise RuntimeError("nope")

    monkeypatch.setattr(torch.onnx, "export", always_breaks)
    with pytest.raises(OnnxExportError, match="'tiny'.*dynamo.*TorchScript"):
        export_onnx(tiny_program(), tmp_path / "tiny.onnx")
    assert not (tmp_path / "tiny.onnx").exists()


def test_training_program_is_exported_in_eval_mode_without_changing_it(tmp_path):
    program = tiny_program(training=True)
    assert program.training
    result = export_onnx(program, tmp_path / "tiny.onnx")
    assert program.training  # the caller's Program is untouched
    x = program.example_inputs[0]
    with torch.no_grad():
        expected = program.clone().eval()(x)["logits"].numpy()
    logits = OnnxRuntimeSession(result.path).run(x)[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_real_dynamo_failure_falls_back(tmp_path):
    # timm BEiT does not get through the dynamo exporter (its attention reshape) on torch 2.14.
    timm_beit = pytest.importorskip("timm.models.beit")
    torch.manual_seed(0)
    model = timm_beit.Beit(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                           use_rel_pos_bias=True, num_classes=10).eval()
    program = capture(model, torch.randn(1, 3, 32, 32), name="beit")
    result = export_onnx(program, tmp_path / "beit.onnx")
    assert (result.exporter == "torchscript") == (result.fallback_reason is not None)
    assert check_parity(program, result.path).relative < TOLERANCE


def test_session_accepts_numpy_and_torch(tiny):
    program, result = tiny
    session = OnnxRuntimeSession(result.path, threads=1)
    x = program.example_inputs[0]
    from_torch, from_numpy = session.run(x), session.run(x.numpy())
    assert len(from_torch) == 2
    for a, b in zip(from_torch, from_numpy):
        np.testing.assert_array_equal(a, b)
    assert session.session.get_session_options().intra_op_num_threads == 1


def test_session_rejects_wrong_inputs(tiny):
    program, result = tiny
    session = OnnxRuntimeSession(result.path)
    with pytest.raises(OnnxSessionError, match="takes 1 input"):
        session.run()
    with pytest.raises(OnnxSessionError, match=r"expects shape \(2, 3, 16, 16\)"):
        session.run(torch.randn(2, 3, 8, 8))
    with pytest.raises(OnnxSessionError, match="ONNX Runtime failed"):  # float64 instead of float32
        session.run(np.zeros((2, 3, 16, 16)))


def test_corrupt_or_missing_onnx_file_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe")
    with pytest.raises(PrunefxError, match="corrupt or not an ONNX file") as caught:
        OnnxRuntimeSession(corrupt)
    assert "\n" not in str(caught.value)
    with pytest.raises(OnnxSessionError, match="no such ONNX file"):
        OnnxRuntimeSession(tmp_path / "missing.onnx")


def test_the_fast_exporter_gives_the_same_network(tmp_path):
    """The TorchScript exporter (the budget search's) writes a file with the same outputs as the dynamo one."""
    import onnxruntime as ort

    program = tiny_program()
    files = {name: export_onnx(program, tmp_path / f"{name}.onnx", exporter=name) for name in ("dynamo", "torchscript")}
    assert {name: result.exporter for name, result in files.items()} == {"dynamo": "dynamo", "torchscript": "torchscript"}
    x = program.example_inputs[0].numpy()
    outputs = [ort.InferenceSession(str(result.path)).run(None, {"input_0": x})[0] for result in files.values()]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(OnnxExportError, match="exporter must be one of dynamo, torchscript"):
        export_onnx(program, tmp_path / "x.onnx", exporter="tflite")


def test_exports_share_one_translation_table_and_write_what_a_table_of_their_own_writes(tmp_path, monkeypatch):
    """torch.onnx builds its torchlib table once per opset for prunefx's exports (runtime/onnx/torchlib_registry.py);
    the oracle for the files is an export that built its own table (the block left out), and torch.onnx is as
    it was outside the block."""
    from torch.onnx._internal.exporter import _registration

    from prunefx.runtime.onnx import export as export_module
    from prunefx.runtime.onnx import torchlib_registry

    built = []
    original = vars(_registration.ONNXRegistry)["from_torchlib"]
    counting = classmethod(lambda cls, *args, **kwargs: built.append(args) or original.__func__(cls, *args, **kwargs))
    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", counting)
    monkeypatch.setattr(torchlib_registry, "_BUILT", {})
    program = tiny_program()

    def exported(name):  # each a real export, not a copy of the one before (runtime/onnx/export_memo.py)
        forget_written()
        return export_onnx(program, tmp_path / name).path.read_bytes()

    shared = [exported(f"{index}.onnx") for index in range(2)]
    assert len(built) == 1  # the second export reused the first one's table
    assert vars(_registration.ONNXRegistry)["from_torchlib"] is counting  # as it was, outside the block
    monkeypatch.setattr(export_module, "registries_reused", contextlib.nullcontext)  # a table of its own
    own = exported("own.onnx")
    assert len(built) == 2 and shared[0] == shared[1] == own


def test_a_translation_one_export_adds_never_reaches_the_next():
    """torch.onnx adds a caller's custom translations to the table it was given: each export inside the block
    gets its own copy of the shared one (the oracle: the custom entry is in the first table only)."""
    from torch.onnx._internal.exporter import _registration

    from prunefx.runtime.onnx.torchlib_registry import registries_reused

    relu = torch.ops.aten.relu.default
    with registries_reused():
        first = _registration.ONNXRegistry().from_torchlib(opset_version=18)
        first.register_op(relu, lambda x: x)
        second = _registration.ONNXRegistry().from_torchlib(opset_version=18)
    assert any(meta.is_custom for meta in first.get_decomps(relu))
    assert second.get_decomps(relu) and not any(meta.is_custom for meta in second.get_decomps(relu))


def test_the_same_program_exported_again_is_a_copy_of_the_first_file(tmp_path, monkeypatch):
    """A budget search's confirmation exports the chosen candidate as delivered; model.onnx is then that same
    file, not a second export. The oracle: the exporter's calls, and the bytes of the files."""
    import prunefx.runtime.onnx.export as export

    calls = []
    dynamo = export._export_dynamo
    monkeypatch.setattr(export, "_export_dynamo", lambda *args: calls.append(1) or dynamo(*args))
    program = tiny_program()
    first = export_onnx(program, tmp_path / "first.onnx")
    again = export_onnx(program.clone(), tmp_path / "again.onnx")  # another object, the same contents
    assert len(calls) == 1 and again.path == tmp_path / "again.onnx"
    assert again.path.read_bytes() == first.path.read_bytes() and again.exporter == first.exporter
    assert check_parity(program, again.path).relative < TOLERANCE
    export_onnx(program, tmp_path / "other.onnx", opset=19)  # other settings: exported
    changed = program.clone()
    with torch.no_grad():
        changed.module.conv.weight.add_(1.0)
    export_onnx(changed, tmp_path / "changed.onnx")  # other weights: exported
    first.path.write_bytes(b"changed behind prunefx's back")
    export_onnx(program, tmp_path / "third.onnx")  # the file it would copy changed: exported
    assert len(calls) == 4
    assert check_parity(changed, tmp_path / "changed.onnx").relative < TOLERANCE


def test_a_copy_over_a_file_whose_weights_lay_beside_it_leaves_no_stale_weights(tmp_path, monkeypatch):
    """The copy replaces a pair (a model over 2 GB, its weights in model.onnx.data) with one whole file: the
    previous weights go, as after an export."""
    import prunefx.runtime.onnx.export as export

    def mlp(shift: float):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
        with torch.no_grad():
            model[0].weight.add_(shift)
        return capture(model, torch.randn(2, 16), name="mlp")

    program = mlp(0.0)
    export_onnx(program, tmp_path / "first.onnx")  # whole, remembered
    with monkeypatch.context() as patched:
        patched.setattr(export, "STRUCTURE_HEADROOM", 4 << 30)  # as if over 2 GB: weights beside it
        export_onnx(mlp(1.0), tmp_path / "out" / "model.onnx")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["model.onnx", "model.onnx.data"]
    export_onnx(program, tmp_path / "out" / "model.onnx")  # a copy of first.onnx over the pair
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["model.onnx"]
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (tmp_path / "first.onnx").read_bytes()
    assert check_parity(program, tmp_path / "out" / "model.onnx").relative < TOLERANCE


def test_a_model_whose_tensors_all_stay_inside_is_written_whole_when_its_weights_would_go_beside_it(tmp_path,
                                                                                                  monkeypatch):
    """onnx writes no side file for tensors under 1 KB: with the weights sent beside the file (here: no headroom
    left), a model of such tensors only is one file, not a FileNotFoundError for a side file never written."""
    import prunefx.runtime.onnx.export as export

    monkeypatch.setattr(export, "STRUCTURE_HEADROOM", 4 << 30)
    program = tiny_program()  # its largest tensor, the convolution's weight, is 864 bytes
    exported = export_onnx(program, tmp_path / "model.onnx")
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]
    assert check_parity(program, exported.path).relative < TOLERANCE


class _NoGradTail(torch.nn.Module):
    """A convolution, then an activation in a `with torch.no_grad():` block: torch.export captures the block as a
    graph of its own, which the outer graph's code only calls."""

    def __init__(self, activation: torch.nn.Module):
        super().__init__()
        self.conv, self.activation = torch.nn.Conv2d(3, 4, 3), activation

    def forward(self, x):
        y = self.conv(x)
        with torch.no_grad():
            return self.activation(y) + 1


def test_models_that_differ_only_inside_a_nested_graph_are_exported_apart(tmp_path):
    # the export memo keyed them by the outer graph's code: the second file was a copy of the first
    import onnxruntime as ort

    x = torch.randn(1, 3, 8, 8)
    programs = []
    for activation in (torch.nn.ReLU(), torch.nn.Sigmoid()):
        torch.manual_seed(0)  # the same weights
        programs.append(capture(_NoGradTail(activation).eval(), x))
    for index, program in enumerate(programs):
        path = export_onnx(program, tmp_path / f"{index}.onnx").path
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input_0": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - program(x).numpy()).max() < 1e-5
