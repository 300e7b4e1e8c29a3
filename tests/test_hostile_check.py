"""`prunefx check` (and `bench`'s pre-run check) on hostile ONNX files: external data is read only from the
model's own folder (never the current directory, never `..`, an absolute path, a link out or a FIFO), a
graph with a cycle or a node without outputs is refused, an initializer declaring 2**40 elements without
data is one line, and a 100,000-node chain in front of 2,000 layers is walked once. Every refusal is one
line with exit 2; nothing outside the model's folder is read (a planted token never shows)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from prunefx.cli import main
from prunefx.runtime.onnx.bounds import check_value_sizes
from prunefx.runtime.onnx.external import ExternalDataError

SECRET = "TOKEN-7f3a-outside-the-model-folder"
# A 2:4 pattern along input channels (two of every four zero): `check` notes it as sparse-eligible, which
# dense weights are not. The note tells which bytes the check read.
SPARSE = np.tile(np.array([1, 0, 1, 0], np.float32), (8, 1)).reshape(8, 4, 1, 1)


def _conv_model(weight_tensor: onnx.TensorProto, *, extra_nodes=(), extra_inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), *extra_nodes], "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[weight_tensor, *extra_inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _declared(dims, values=()) -> onnx.TensorProto:
    """A float tensor `w` declaring `dims` and holding `values`, whether they fit or not (helper.make_tensor
    would refuse the mismatch; a hostile file need not)."""
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT)
    tensor.dims.extend(dims)
    tensor.float_data.extend(values)
    return tensor


def _external(location: str, nbytes: int = SPARSE.nbytes) -> onnx.TensorProto:
    """The weight `w` (8 x 4 x 1 x 1 float) stored in the file `location`, as ONNX writes external data."""
    tensor = _declared(SPARSE.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _write(folder, location: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(_conv_model(_external(location)).SerializeToString())
    return str(path)


def _check(capsys, *argv) -> tuple[int, str, str]:
    status = main(["check", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip()


def _one_line_refusal(status: int, out: str, err: str) -> None:
    assert status == 2, (status, out, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert SECRET not in out + err


def test_external_data_beside_the_model_is_read_from_its_folder_not_the_current_one(tmp_path, capsys,
                                                                                    monkeypatch):
    model = _write(tmp_path / "model", "w.bin")
    (tmp_path / "model" / "w.bin").write_bytes(SPARSE.tobytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w.bin").write_bytes(np.ones(SPARSE.shape, np.float32).tobytes())  # dense: no 2:4 note
    monkeypatch.chdir(elsewhere)
    status, out, err = _check(capsys, model)
    assert status == 0, err
    assert "sparse-eligible" in out  # computed from the 2:4 bytes beside the model, not ./w.bin's ones
    check_value_sizes(tmp_path / "model" / "m.onnx")  # bench's pre-run check accepts it too


def test_external_data_missing_beside_the_model_is_not_taken_from_the_current_folder(tmp_path, capsys,
                                                                                     monkeypatch):
    model = _write(tmp_path / "model", "w.bin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.bin").write_bytes(SPARSE.tobytes())
    _one_line_refusal(*_check(capsys, model))


def _secret(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes((SECRET * 8).encode()[:SPARSE.nbytes])
    os.utime(secret, ns=(1_000_000_000, 2_000_000_000))  # accessed before modified: any read moves the atime
    return secret


@pytest.mark.parametrize("case", ["parent", "absolute", "link out", "fifo", "beyond its end"])
def test_hostile_external_data_is_one_line_exit_2_in_check_and_bench(tmp_path, capsys, case):
    secret = _secret(tmp_path)
    folder = tmp_path / "model"
    location = {"parent": "../secret.bin", "absolute": str(secret)}.get(case, "w.bin")
    model = _write(folder, location)
    if case == "link out":
        (folder / "w.bin").symlink_to(secret)
    elif case == "fifo":
        os.mkfifo(folder / "w.bin")
    elif case == "beyond its end":
        (folder / "w.bin").write_bytes(b"\0" * 16)
    before = os.stat(secret).st_atime_ns
    _one_line_refusal(*_check(capsys, model))
    if case != "beyond its end":
        with pytest.raises(ExternalDataError):
            check_value_sizes(folder / "m.onnx")
    assert os.stat(secret).st_atime_ns == before  # never read (its atime is not after its mtime: relatime moves it)


def _run_within(seconds: float, function):
    """function() in a thread; fails if it has not returned within `seconds` (a walk that never ends)."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return result["value"]


def test_a_graph_with_a_cycle_is_refused_in_one_line(tmp_path, capsys):
    weight = numpy_helper.from_array(SPARSE, "w")
    nodes = [helper.make_node("Identity", ["b"], ["a"], name="first"),
             helper.make_node("Identity", ["a"], ["b"], name="second")]
    graph = helper.make_graph([helper.make_node("Conv", ["a", "w"], ["y"], name="conv"), *nodes], "cycle",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[weight])
    path = tmp_path / "cycle.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    status, out, err = _run_within(30, lambda: _check(capsys, str(path)))
    _one_line_refusal(status, out, err)
    assert "cycle" in err


def test_a_node_without_outputs_is_refused_in_one_line(tmp_path, capsys):
    model = _conv_model(numpy_helper.from_array(SPARSE, "w"),
                        extra_nodes=[helper.make_node("Relu", ["y"], [], name="nothing")])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    status, out, err = _check(capsys, str(path))
    _one_line_refusal(status, out, err)
    assert "no outputs" in err


def test_an_initializer_declaring_2_to_the_40_elements_without_data_is_one_line(tmp_path, capsys):
    huge = _declared([2**20, 2**20, 1, 1])
    path = tmp_path / "m.onnx"
    path.write_bytes(_conv_model(huge).SerializeToString())
    status, out, err = _run_within(30, lambda: _check(capsys, str(path)))
    _one_line_refusal(status, out, err)
    assert "2**28" in err


def test_a_short_initializer_is_one_line(tmp_path, capsys):
    short = _declared(SPARSE.shape, [1.0, 2.0])
    path = tmp_path / "m.onnx"
    path.write_bytes(_conv_model(short).SerializeToString())
    _one_line_refusal(*_check(capsys, str(path)))


@pytest.mark.slow  # building the 102,000-node file takes most of its 6 s
def test_two_thousand_layers_after_a_100000_node_chain_are_checked_in_seconds(tmp_path, capsys):
    """Each layer's input walks back through the chain (is it INT8? where do its channels come from?): once
    for all of them, not once per layer (2 x 10**8 steps took minutes)."""
    chain = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=f"id{i}") for i in range(100_000)]
    chain[0].input[0] = "x"
    weight = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w")  # 3 input channels: not a multiple
    layers = [helper.make_node("Conv", ["t100000", "w"], [f"y{i}"], name=f"conv{i}") for i in range(2_000)]
    graph = helper.make_graph(chain + layers, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                      [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(2_000)],
                              initializer=[weight])
    path = tmp_path / "chain.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    started = time.perf_counter()
    status, out, err = _run_within(120, lambda: _check(capsys, str(path)))
    elapsed = time.perf_counter() - started
    assert status == 0, err
    # the chain starts at the graph input: no layer is reported for its 3 input channels
    assert "channel-multiple" not in out
    assert elapsed < 60, elapsed


@pytest.mark.parametrize("scopes", ["[" * 50_000 + "]" * 50_000, "__import__('os')", "5", "['a', 3]",
                                    "'x' * 10", "[" + "'a'," * 100_000 + "]"])
def test_hostile_provenance_metadata_is_ignored_not_evaluated(scopes):
    from prunefx.runtime.onnx.provenance import onnx_node_origins

    node = helper.make_node("Relu", ["x"], ["y"], name="/layer1/relu/Relu")
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", scopes
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    origin, = onnx_node_origins(helper.make_model(graph))
    assert origin.fx_name is None and origin.scope == "layer1.relu"  # the name's scope, as without metadata


@pytest.mark.parametrize("entries", [
    {"location": "w\0.bin"}, {"location": "x" * 5000}, {"location": ""}, {"location": "C:\\w.bin"},
    {"location": "sub/../../w.bin"}, {"location": "w.bin", "offset": "-1"}, {"location": "w.bin", "offset": "abc"},
    {"location": "w.bin", "length": str(2**62)}, {"location": "w.bin", "offset": str(2**62)}, {},
])
def test_hostile_external_data_entries_are_one_line(tmp_path, capsys, entries):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(SPARSE.tobytes())
    tensor = _declared(SPARSE.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (folder / "m.onnx").write_bytes(_conv_model(tensor).SerializeToString())
    _one_line_refusal(*_check(capsys, str(folder / "m.onnx")))
    with pytest.raises(ExternalDataError):
        check_value_sizes(folder / "m.onnx")


@pytest.mark.parametrize("reads", ["node", "graph output"])
def test_a_value_nothing_gives_is_refused_in_one_line(tmp_path, capsys, reads):
    value = helper.make_tensor_value_info
    node = helper.make_node("Add", ["x", "ghost"] if reads == "node" else ["x", "x"], ["y"], name="add")
    outputs = [value("y" if reads == "node" else "ghost", TensorProto.FLOAT, [1, 4])]
    graph = helper.make_graph([node], "ghost", [value("x", TensorProto.FLOAT, [1, 4])], outputs)
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    status, out, err = _check(capsys, str(path))
    _one_line_refusal(status, out, err)
    assert "'ghost'" in err and "no node, graph input or initializer" in err
