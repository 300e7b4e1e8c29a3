"""`prunefx export -o FILE` of a model whose weights go in a side file (over protobuf's 2 GB; here a headroom
that leaves no room): the side file is named for its run and published before the file that reads it, so a
run killed between the two moves never pairs files of two runs, and the replaced file's weights are removed."""

from __future__ import annotations

import importlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from prunefx.cli import main
from prunefx.graph import Program, capture

onnx_export = importlib.import_module("prunefx.runtime.onnx.export")
output = importlib.import_module("prunefx.output")
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(tmp_path, seed: int):
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    return capture(module, torch.randn(2, 16), name=f"mlp{seed}").save(tmp_path / f"mlp{seed}.pt2")


def _side_files(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("model.onnx.") and name.endswith(".data"))


def _runs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_a_second_export_replaces_the_pair_and_leaves_no_weights_of_the_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(onnx_export, "STRUCTURE_HEADROOM", 4 << 30)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(_model(tmp_path, 0)), "-o", str(out / "model.onnx")]) == 0
    (first,) = _side_files(out)
    assert main(["export", str(_model(tmp_path, 1)), "-o", str(out / "model.onnx")]) == 0
    (second,) = _side_files(out)
    assert second != first  # a name of its own run; the first run's weights are gone
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {second}
    capsys.readouterr()


def test_the_side_file_moves_in_before_the_file_that_reads_it(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "STRUCTURE_HEADROOM", 4 << 30)
    out = tmp_path / "out"
    out.mkdir()
    moved = []
    real_replace = os.replace

    def recording(source, target):
        if os.path.dirname(os.path.abspath(target)) == str(out):  # publishing, not the export's own rename
            moved.append(os.path.basename(target))
        return real_replace(source, target)

    monkeypatch.setattr(output.os, "replace", recording)
    source = _model(tmp_path, 0)
    assert main(["export", str(source), "-o", str(out / "model.onnx")]) == 0
    published = [name for name in moved if name.startswith("model.onnx")]
    assert published[-1] == "model.onnx" and published[0].endswith(".data")
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    expected = Program.load(source)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_runs(out / "model.onnx", x), expected, rtol=1e-5, atol=1e-5)


def test_export_onnx_over_a_pair_keeps_the_previous_pair_whole_until_the_new_file_replaces_it(tmp_path, monkeypatch):
    """The library's export_onnx onto a file whose weights are beside it: the new weights take a name of their
    own (the usual one is the previous file's), so a stop before the file itself is replaced leaves the previous
    file reading its own weights; a finished export removes them."""
    from prunefx.runtime import export_onnx
    monkeypatch.setattr(onnx_export, "STRUCTURE_HEADROOM", 4 << 30)
    out = tmp_path / "out"
    first, second = Program.load(_model(tmp_path, 0)), Program.load(_model(tmp_path, 1))
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    export_onnx(first, out / "model.onnx")
    assert _side_files(out) == ["model.onnx.data"]
    expected = first(torch.from_numpy(x)).detach().numpy()

    real_replace = os.replace

    def stopped_at_the_file(source, target):
        if os.path.basename(target) == "model.onnx":
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", stopped_at_the_file)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(second, out / "model.onnx")
    monkeypatch.setattr(os, "replace", real_replace)
    np.testing.assert_allclose(_runs(out / "model.onnx", x), expected, rtol=1e-5, atol=1e-5)

    export_onnx(second, out / "model.onnx")
    (side,) = _side_files(out)
    assert side != "model.onnx.data"  # the previous file's weights are gone, and with them the stale run's
    np.testing.assert_allclose(_runs(out / "model.onnx", x), second(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("through", ["export_onnx", "prunefx export"])
def test_weights_a_killed_export_left_beside_the_file_go_with_the_next_export(tmp_path, monkeypatch, capsys, through):
    """Found by their names (FILE.data, FILE.<8 hex>.data), not by reading the file being replaced; the library
    and the command name and remove them by the same rule."""
    from prunefx.runtime import export_onnx
    monkeypatch.setattr(onnx_export, "STRUCTURE_HEADROOM", 4 << 30)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx.0123abcd.data").write_bytes(b"a killed export's weights")
    (out / "model.onnx.notours.data").write_bytes(b"kept")
    source = _model(tmp_path, 0)
    if through == "export_onnx":
        export_onnx(Program.load(source), out / "model.onnx")
    else:
        assert main(["export", str(source), "-o", str(out / "model.onnx")]) == 0
    assert _side_files(out) == ["model.onnx.data", "model.onnx.notours.data"]
    capsys.readouterr()


def test_an_interrupt_after_the_file_was_written_says_so(tmp_path, monkeypatch, capsys):
    """Ctrl-C once the file is in place: exit 130, and the one line names what was written rather than claiming
    that nothing was."""
    export_command = importlib.import_module("prunefx.cli.commands.export")

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_command, "remove_stale_side_files", interrupted)
    out = tmp_path / "model.onnx"
    assert main(["export", str(_model(tmp_path, 0)), "-o", str(out)]) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"prunefx export: interrupted; after writing {out}" and out.is_file()
