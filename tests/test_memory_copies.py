"""How many copies of a model's weights the deliverable path holds: the dense Program's tensors are released
when a Pipeline rewrites the Program it is handed, shape inference of the size check never sees the weights,
and the ONNX export checks the file it wrote instead of serialising the model once more for the checker."""

import errno
import gc
import io
import platform
import weakref

import onnx
import pytest
import torch

from prunefx.graph import capture
from prunefx.graph.attributes import set_tensor
from prunefx.graph.export_refresh import with_current_tensors
from prunefx.graph.heap import release_freed_memory
from prunefx.graph.zip_target import FailureHoldingFile
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import OnnxExportError, export_onnx
from prunefx.runtime.check import readiness as engine_check
from prunefx.runtime.onnx import bounds as onnx_bounds
from prunefx.runtime.onnx import export as onnx_export
from prunefx.runtime.onnx.export_memo import forget_written
from prunefx.runtime.onnx.write import save_model_streamed


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 64)
        self.fc2 = torch.nn.Linear(64, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def mlp_program():
    torch.manual_seed(0)
    return capture(Mlp().eval(), torch.randn(2, 16), name="mlp").eval()


def test_a_pipeline_on_the_program_it_is_handed_releases_the_dense_tensors():
    program = mlp_program()
    dense = weakref.ref(program.module.fc1.weight)
    result = Pipeline([(remove_channels, {"channels": 0.5})]).run(program, on_copy=False)
    gc.collect()
    assert result.program is program
    assert program.module.fc1.weight.shape[0] < 64  # pruned in place...
    assert dense() is None  # ...and nothing holds on to the dense weight


def test_a_pipeline_on_a_copy_leaves_the_dense_program_as_it_was():
    program = mlp_program()
    before = program.module.fc1.weight.detach().clone()
    result = Pipeline([(remove_channels, {"channels": 0.5})]).run(program)
    assert result.program is not program
    assert torch.equal(program.module.fc1.weight, before)


def test_the_size_check_infers_shapes_without_the_weights(tmp_path, monkeypatch):
    path = export_onnx(mlp_program(), tmp_path / "mlp.onnx").path
    full = onnx.shape_inference.infer_shapes(onnx.load(path), data_prop=True)  # the oracle: weights inside
    seen = []
    original = onnx.shape_inference.infer_shapes

    def recording(model, *args, **kwargs):
        seen.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", recording)
    onnx_bounds.check_value_sizes(path)
    (given,) = seen
    assert not [t.name for t in given.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert given.ByteSize() < 4 * 16 * 64  # less than fc1's weight alone
    inferred = original(given, data_prop=True)

    def shapes(model):
        return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in (*model.graph.value_info, *model.graph.output)}

    assert shapes(inferred) == shapes(full)


def test_the_export_checks_the_written_file_and_removes_one_that_fails(tmp_path, monkeypatch):
    checked = []
    monkeypatch.setattr(onnx.checker, "check_model",
                        lambda model, *a, **k: checked.append((model, (tmp_path / "ok.onnx").exists())))
    export_onnx(mlp_program(), tmp_path / "ok.onnx")
    ((model, published),) = checked
    assert isinstance(model, str)  # a path: no in-memory model serialised for the checker
    assert not published and (tmp_path / "ok.onnx").is_file()  # checked before it appears under its name

    def failing(model, *args, **kwargs):
        raise onnx.checker.ValidationError("planted")

    monkeypatch.setattr(onnx.checker, "check_model", failing)
    forget_written()  # an export, not a copy of the file before (runtime/onnx/export_memo.py)
    with pytest.raises(OnnxExportError, match="fails onnx.checker: .*planted"):
        export_onnx(mlp_program(), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_an_export_cut_short_by_a_full_disk_leaves_the_previous_file_as_it_was(tmp_path, file_size_limit):
    probe = export_onnx(mlp_program(), tmp_path / "probe.onnx").path
    previous = tmp_path / "model.onnx"
    previous.write_bytes(b"the previous export")
    assert probe.stat().st_mode == previous.stat().st_mode  # the mode any file written here gets (the umask)
    size = probe.stat().st_size
    with file_size_limit(size // 2), pytest.raises(OSError):
        export_onnx(mlp_program(), previous)
    assert previous.read_bytes() == b"the previous export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "probe.onnx"]  # no part left


def test_the_weights_size_is_the_serialised_size_within_the_headroom(tmp_path):
    model = onnx.load(export_onnx(mlp_program(), tmp_path / "mlp.onnx").path)
    weights = onnx_export._weight_bytes(model)
    serialised = len(model.SerializeToString())
    assert 4 * (16 * 64 + 64 + 64 * 8 + 8) <= weights <= serialised
    assert serialised - weights < onnx_export.STRUCTURE_HEADROOM


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_is_released_with_glibc():
    assert release_freed_memory()


def test_one_export_is_shared_until_the_program_changes():
    program = mlp_program()
    first = program.export()
    assert program.export() is first  # the Pipeline's check, model.pt2 and ONNX read the same export
    assert first.state_dict["fc1.weight"] is program.module.fc1.weight  # no copy of the weights
    program.eval()  # no change: the same graph and tensors
    assert program.export() is first


def test_a_changed_program_is_exported_again_and_the_old_export_lets_its_tensors_go():
    program = mlp_program()
    program.export()
    replaced = weakref.ref(program.module.fc1.weight)
    remove_channels(program, config={"channels": 0.5})  # slices fc1 and fc2, then recompiles
    gc.collect()
    assert replaced() is None  # no export kept by the Program holds the dense weight
    second = program.export()
    assert second.state_dict["fc1.weight"].shape[0] < 64


def test_a_tensor_replaced_without_recompiling_is_seen():
    program = mlp_program()
    first = program.export()
    program.module.fc2.bias = torch.nn.Parameter(torch.zeros(8))
    assert program.export() is not first
    program.example_inputs = (torch.randn(2, 16),)
    assert program.export().example_inputs[0][0] is program.example_inputs[0]


def test_tensors_replaced_by_others_alike_keep_the_graph_without_exporting_again(monkeypatch):
    """What recalibrate_batchnorm does: new values in tensors of the same shape. torch.export is not run again, and
    the export reads the new values; one handed out before keeps its own."""
    program = mlp_program()
    first = program.export()
    exports = []
    real_export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    set_tensor(program.module, "fc2.bias", torch.full_like(program.module.fc2.bias, 3.0))
    second = program.export()
    assert exports == [] and second is not first and second.state_dict["fc2.bias"] is program.module.fc2.bias
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(second.module()(x), program.module(x))  # the oracle: the module itself
        assert not torch.equal(first.module()(x), program.module(x))
    set_tensor(program.module, "fc2.bias", torch.zeros(3))  # another shape: not a replacement alike
    assert with_current_tensors(second, program.module, {"fc2.bias"}) is None


def test_the_streamed_onnx_file_is_what_onnx_writes(tmp_path):
    model = onnx.load(export_onnx(mlp_program(), tmp_path / "m.onnx").path)
    model.doc_string = "x" * 300  # a field before the graph, with a length over 127
    model.metadata_props.add(key="k", value="v")  # a field after it
    written = save_model_streamed(model, tmp_path / "streamed.onnx")
    expected = model.SerializeToString()
    assert (tmp_path / "streamed.onnx").read_bytes() == expected
    assert written == len(expected)


def test_the_export_never_serialises_the_whole_model(tmp_path, monkeypatch):
    calls = []
    original = onnx.ModelProto.SerializeToString

    def recording(self, *args, **kwargs):
        serialised = original(self, *args, **kwargs)
        calls.append(len(serialised))
        return serialised

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", recording)
    path = export_onnx(mlp_program(), tmp_path / "mlp.onnx").path
    weights = 4 * 16 * 64  # fc1's weight: no serialised model holds it
    assert calls and max(calls) < weights
    assert onnx.load(path).graph.initializer  # the weights are in the file, inline


def test_the_readiness_of_every_target_reads_the_file_once(tmp_path, monkeypatch):
    path = export_onnx(mlp_program(), tmp_path / "mlp.onnx").path
    separately = {target: engine_check.report_entry(path, target) for target in ("trt11", "ort")}
    loads = []
    original = engine_check.load_onnx
    monkeypatch.setattr(engine_check, "load_onnx", lambda file: loads.append(file) or original(file))
    assert engine_check.report_entries(path, ("trt11", "ort")) == separately
    assert loads == [path]


def test_model_pt2_is_streamed_to_disk_with_the_bytes_a_buffer_gets(tmp_path):
    program = mlp_program()
    buffer = io.BytesIO()
    torch.export.save(program.export(), buffer, extra_files={"prunefx.json": "{}"})
    streamed = tmp_path / "streamed.pt2"
    with open(streamed, "wb") as file:
        target = FailureHoldingFile(file)
        torch.export.save(program.export(), target, extra_files={"prunefx.json": "{}"})
        target.raise_held()
    assert streamed.read_bytes() == buffer.getvalue()


class FillingFile(io.BytesIO):
    """A disk that fills up after `room` bytes."""

    def __init__(self, room):
        super().__init__()
        self.room = room

    def write(self, data):
        if self.tell() + memoryview(data).nbytes > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_write_that_fails_inside_torchs_zip_writer_is_raised_after_it():
    program = mlp_program()
    target = FailureHoldingFile(FillingFile(room=1000))
    torch.export.save(program.export(), target)  # the writer finishes: nothing is raised into it
    with pytest.raises(OSError, match="No space left"):
        target.raise_held()


def test_saving_a_program_onto_a_full_disk_raises_and_leaves_nothing(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k: FillingFile(1000) if "w" in mode
                        and str(file).endswith(".partial") else real_open(file, mode, *a, **k))
    with pytest.raises(OSError, match="No space left"):
        mlp_program().save(tmp_path / "model.pt2")
    assert list(tmp_path.iterdir()) == []


INTERRUPTED_SAVE = """
import os, signal, sys
import torch
from prunefx.graph import Program, capture
from prunefx.graph.zip_target import FailureHoldingFile

signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job's shell may have left it ignored
program = capture(torch.nn.Linear(16, 8).eval(), torch.randn(2, 16))
path = sys.argv[1]
program.save(path)
previous = open(path, "rb").read()
write, calls = FailureHoldingFile.write, []

def interrupted_write(self, data):  # Ctrl-C while torch's writer is in the middle of its records
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGINT)
    return write(self, data)

FailureHoldingFile.write = interrupted_write
try:
    program.save(path)
except KeyboardInterrupt:
    print("interrupted", open(path, "rb").read() == previous, sorted(os.listdir(os.path.dirname(path))))
"""


def test_ctrl_c_during_a_save_is_an_interrupt_and_leaves_the_previous_file(tmp_path):
    """torch's zip writer calls back into Python for every block it writes, and aborts the process (std::terminate)
    when an exception comes back: a Ctrl-C then took the caller's process, a notebook's kernel with it."""
    import subprocess
    import sys

    path = tmp_path / "model.pt2"
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_SAVE, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["interrupted", "True", "['model.pt2']"]


def test_capture_copies_the_weights_unless_told_the_model_is_given_away():
    model = Mlp().eval()
    copied = capture(model, torch.randn(2, 16))
    assert copied.module.fc1.weight.data_ptr() != model.fc1.weight.data_ptr()
    taken = capture(model, torch.randn(2, 16), copy_weights=False)
    assert taken.module.fc1.weight.data_ptr() == model.fc1.weight.data_ptr()
    exported = torch.export.export(model, (torch.randn(2, 16),))  # an ExportedProgram given away, alike
    held = {tensor.data_ptr() for tensor in exported.state_dict.values()}
    assert capture(exported).module.fc1.weight.data_ptr() not in held
    assert capture(exported, copy_weights=False).module.fc1.weight.data_ptr() in held


def test_a_model_built_only_for_its_program_is_not_kept_nor_copied(monkeypatch):
    import prunefx.loading as loading

    copies = []
    real_capture = loading.capture
    monkeypatch.setattr(loading, "capture", lambda *a, **k: copies.append(k["copy_weights"]) or real_capture(*a, **k))
    model, program = loading.model_and_program("prunefx:resnet20", input_shape="1x1x28x28", keep_model=False)
    assert model is None and copies == [False]
    model, program = loading.model_and_program("prunefx:resnet20", input_shape="1x1x28x28")
    assert model is not None and copies == [False, True]  # kept for --module's write-back: the Program copies
    loading.program_from_reference("prunefx:resnet20", input_shape="1x1x28x28")
    assert copies[-1] is False


def test_the_export_keeps_the_weights_apart_and_writes_the_same_file(tmp_path, monkeypatch):
    program = mlp_program()
    cleaned_inputs = []
    real_clean = onnx_export.clean_graph
    monkeypatch.setattr(onnx_export, "clean_graph", lambda model, weights: cleaned_inputs.append(
        [t.name for t in model.graph.initializer if t.HasField("raw_data")]) or real_clean(model, weights))
    apart = export_onnx(program, tmp_path / "apart.onnx").path
    assert cleaned_inputs == [[]]  # the exporter's model reached the cleanup without the weights' data
    monkeypatch.setattr(onnx_export, "_weights_apart", lambda model: {})  # the weights left inside: the oracle
    forget_written()  # an export, not a copy of the file before (runtime/onnx/export_memo.py)
    inside = export_onnx(program, tmp_path / "inside.onnx").path
    assert apart.read_bytes() == inside.read_bytes()


def test_weights_beside_the_file_hold_what_the_inline_file_holds(tmp_path, monkeypatch):
    """A model over protobuf's 2 GB (here: a headroom that leaves no room) puts its weights in model.onnx.data;
    the weights held apart during the export are written there with the same values."""
    program = mlp_program()
    inline = onnx.load(export_onnx(program, tmp_path / "inline.onnx").path)
    monkeypatch.setattr(onnx_export, "STRUCTURE_HEADROOM", 4 << 30)
    forget_written()  # an export, not a copy of the file before (runtime/onnx/export_memo.py)
    beside = export_onnx(program, tmp_path / "beside" / "model.onnx").path
    assert (beside.parent / "model.onnx.data").stat().st_size >= 4 * (16 * 64 + 64 * 8)
    loaded = onnx.load(str(beside))  # reads model.onnx.data
    values = {t.name: onnx.numpy_helper.to_array(t) for t in inline.graph.initializer}
    assert {t.name for t in loaded.graph.initializer} == set(values)
    for tensor in loaded.graph.initializer:
        assert (onnx.numpy_helper.to_array(tensor) == values[tensor.name]).all()


def test_weights_beside_the_file_are_replaced_by_a_second_export_to_the_same_path(tmp_path, monkeypatch):
    """onnx's writer appends to an existing side file (and refuses one it finds relative to the working
    directory): a second export of a model over 2 GB to the same path holds the second model's weights alone,
    in one side file (a name of its own while the usual one is the replaced file's), nothing else left beside."""
    first, second = mlp_program(), mlp_program()
    with torch.no_grad():
        for parameter in second.module.parameters():
            parameter.add_(1.0)
    inline = onnx.load(export_onnx(second, tmp_path / "inline.onnx").path)  # the oracle: the same weights inline
    monkeypatch.setattr(onnx_export, "STRUCTURE_HEADROOM", 4 << 30)
    folder = tmp_path / "beside"
    export_onnx(first, folder / "model.onnx")
    size = (folder / "model.onnx.data").stat().st_size
    forget_written()  # an export, not a copy of the inline file (runtime/onnx/export_memo.py)
    export_onnx(second, folder / "model.onnx")
    (side,) = [path for path in folder.iterdir() if path.name != "model.onnx"]
    assert side.name.startswith("model.onnx.") and side.name.endswith(".data")
    assert side.stat().st_size == size  # replaced, not appended to (onnx appends)
    assert side.stat().st_mode == (folder / "model.onnx").stat().st_mode  # the umask's
    loaded = onnx.load(str(folder / "model.onnx"))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in inline.graph.initializer}
    assert {t.name for t in loaded.graph.initializer} == set(values)
    for tensor in loaded.graph.initializer:
        assert (onnx.numpy_helper.to_array(tensor) == values[tensor.name]).all()
