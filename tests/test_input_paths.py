"""How input paths are read: `~` expanded in every file argument (the shell leaves it in `--opt=~/x` and in
quotes), a local recipe file that shares a shipped recipe's name refused as ambiguous, `--trtexec NAME` for a
file in the current folder run as that file, and a model file that imports the modules beside it."""

from __future__ import annotations

import os
import stat
import sys
import textwrap

import pytest
import torch
from torch import nn

from prunefx.cli import main
from prunefx.graph import capture
from prunefx.models import ModelReferenceError, build_model, load_weights
from prunefx.named_recipes import RECIPES_DIR, recipe_path
from prunefx.passes.core.recipe import RecipeError
from prunefx.runtime import export_onnx
from prunefx.runtime.errors import BackendUnavailableError
from prunefx.runtime.tensorrt.trtexec_command import find_trtexec

MODEL_FILE = """\
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU())
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder of our own, and a current folder elsewhere (so a path relative to it cannot be found)."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return folder


def _onnx_file(path):
    program = capture(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 16, 16))
    return export_onnx(program, path).path


# ---- 1. `~` in every input path -----------------------------------------------------------------

def test_weights_path_expands_tilde(home):
    saved = nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU())
    torch.save(saved.state_dict(), home / "w.pth")
    model = load_weights(nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU()), "~/w.pth")
    assert torch.equal(model[0].weight, saved[0].weight) and torch.equal(model[0].bias, saved[0].bias)


def test_model_file_reference_expands_tilde(home):
    (home / "m.py").write_text(MODEL_FILE)
    spec = build_model("~/m.py:build")
    assert spec.name == "m:build" and spec.module[0].out_channels == 7


def test_saved_program_reference_expands_tilde(home):
    (home / "p.pt2").write_bytes(b"not read until loaded")
    assert build_model("~/p.pt2").program_path == home / "p.pt2"


def test_ultralytics_checkpoint_expands_tilde(home):
    pytest.importorskip("ultralytics")
    with pytest.raises(ModelReferenceError, match=f"checkpoint {home / 'nope.pt'} not found"):
        build_model("ultralytics:~/nope.pt")


def test_cli_model_and_weights_expand_tilde(home, capsys):
    (home / "m.py").write_text(MODEL_FILE)
    torch.save(nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU()).state_dict(), home / "w.pth")
    code = main(["inspect", "~/m.py:build", "--weights=~/w.pth", "--input-shape", "1x3x16x16"])
    assert code == 0, capsys.readouterr().err


def test_bench_vs_expands_tilde(home, capsys):
    first = _onnx_file(home.parent / "a.onnx")
    _onnx_file(home / "b.onnx")
    code = main(["bench", str(first), "--vs=~/b.onnx", "--runs", "2", "--warmup", "1"])
    assert code == 0, capsys.readouterr().err


def test_trtexec_path_expands_tilde(home):
    fake = home / "trtexec"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert find_trtexec("~/trtexec") == str(fake)


# ---- 2. a local recipe file named like a shipped recipe -----------------------------------------

SHIPPED = "cpd-macs0.5"  # a recipe docs/reference/cli.md names


@pytest.fixture
def edited_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / f"{SHIPPED}.yaml"
    copy.write_text((RECIPES_DIR / f"{SHIPPED}.yaml").read_text() + "  - no_such_pass\n")
    return copy


def test_recipe_named_like_a_shipped_one_is_refused_as_ambiguous(edited_copy):
    with pytest.raises(RecipeError) as caught:
        recipe_path(f"{SHIPPED}.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert f"shipped recipe {SHIPPED} " in message and f"./{SHIPPED}.yaml" in message


def test_recipe_either_spelling_that_is_not_ambiguous_is_read(edited_copy):
    assert recipe_path(f"./{SHIPPED}.yaml").resolve() == edited_copy  # a path: the user's file
    assert recipe_path(SHIPPED) == RECIPES_DIR / f"{SHIPPED}.yaml"  # no file by that name here: the shipped one


def test_recipe_in_the_recipes_folder_itself_is_not_ambiguous(monkeypatch):
    monkeypatch.chdir(RECIPES_DIR)  # the file in the current folder is the shipped one
    assert recipe_path(f"{SHIPPED}.yaml") == RECIPES_DIR / f"{SHIPPED}.yaml"


def test_cli_refuses_an_ambiguous_recipe_in_one_line(edited_copy, capsys):
    code = main(["compress", "prunefx:resnet20", "--data", "./nodata", "--recipe", f"{SHIPPED}.yaml", "-o", "out"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("prunefx compress: error: ") and f"./{SHIPPED}.yaml" in lines[0]


# ---- 3. --trtexec NAME for a file in the current folder -----------------------------------------

@pytest.fixture
def cwd_with_trtexec(tmp_path, monkeypatch):
    """A stand-in trtexec in the current folder (not on PATH) that leaves a mark when run, then fails."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    fake = tmp_path / "mytrt"
    # `: >`, not touch: PATH holds nothing here
    fake.write_text(f"#!/bin/sh\n: > {tmp_path / 'ran'}\necho '[TensorRT v100300]'\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "notexec").write_text("hi\n")
    return tmp_path


def test_trtexec_in_the_current_folder_is_found_by_absolute_path(cwd_with_trtexec):
    assert find_trtexec("mytrt") == str(cwd_with_trtexec / "mytrt")
    assert find_trtexec("./mytrt") == str(cwd_with_trtexec / "mytrt")


def test_trtexec_that_is_not_executable_is_refused(cwd_with_trtexec):
    with pytest.raises(BackendUnavailableError, match="notexec is not executable"):
        find_trtexec("./notexec")
    with pytest.raises(BackendUnavailableError, match="is a folder"):
        find_trtexec(str(cwd_with_trtexec))


def test_cli_runs_the_trtexec_in_the_current_folder(cwd_with_trtexec, capsys):
    _onnx_file(cwd_with_trtexec / "m.onnx")
    code = main(["bench", "m.onnx", "--backend", "trtexec", "--trtexec", "mytrt", "--runs", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert (cwd_with_trtexec / "ran").exists()  # our stand-in ran, not a PATH lookup
    assert code == 2 and len(lines) == 1 and "trtexec failed with status 1" in lines[0], lines


def test_cli_refuses_a_trtexec_that_is_not_executable(cwd_with_trtexec, capsys):
    _onnx_file(cwd_with_trtexec / "m.onnx")
    code = main(["bench", "m.onnx", "--backend", "trtexec", "--trtexec", "./notexec", "--runs", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "notexec is not executable" in lines[0], lines


# ---- 4. a model file imports the modules beside it ----------------------------------------------

@pytest.fixture
def sibling_modules():
    """Module names unique to these tests, forgotten after each (an import is cached in sys.modules)."""
    names = ["prunefx_test_sibling_layers", "prunefx_test_sibling_lazy"]
    yield names
    for name in names:
        sys.modules.pop(name, None)


def _model_folder(tmp_path, net_source: str):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "prunefx_test_sibling_layers.py").write_text(
        "import torch.nn as nn\ndef block(): return nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())\n")
    (folder / "prunefx_test_sibling_lazy.py").write_text("WIDTH = 9\n")
    (folder / "net.py").write_text(textwrap.dedent(net_source))
    return folder


def test_model_file_imports_its_siblings_and_leaves_sys_path_as_found(tmp_path, sibling_modules):
    folder = _model_folder(tmp_path, """\
        import torch.nn as nn
        from prunefx_test_sibling_layers import block

        def build():
            from prunefx_test_sibling_lazy import WIDTH  # imported only when the factory runs
            return nn.Sequential(block(), nn.Conv2d(5, WIDTH, 1))
    """)
    before, writes_bytecode = list(sys.path), sys.dont_write_bytecode
    spec = build_model(f"{folder / 'net.py'}:build")
    assert spec.module[0][0].out_channels == 5 and spec.module[1].out_channels == 9
    assert sys.path == before and sys.dont_write_bytecode == writes_bytecode
    assert sorted(p.name for p in folder.iterdir()) == [  # no __pycache__ beside the user's files
        "net.py", "prunefx_test_sibling_layers.py", "prunefx_test_sibling_lazy.py"]


def test_the_model_files_folder_leaves_sys_path_and_what_the_file_added_stays(tmp_path, sibling_modules):
    """A model file that puts its own vendored folder on sys.path at import and imports from it in its factory
    (the user's own way, which worked before prunefx put the file's folder there) still builds; the folder
    prunefx put there goes, also when the file fails."""
    vendored = tmp_path / "third_party"
    vendored.mkdir()
    (vendored / "prunefx_test_sibling_lazy.py").write_text("WIDTH = 7\n")
    folder = _model_folder(tmp_path, f"""\
        import sys
        import torch.nn as nn
        sys.path.insert(0, {str(vendored)!r})

        def build():
            from prunefx_test_sibling_lazy import WIDTH
            return nn.Conv2d(3, WIDTH, 1)
    """)
    (folder / "prunefx_test_sibling_lazy.py").unlink()
    before = list(sys.path)
    try:
        assert build_model(f"{folder / 'net.py'}:build").module.out_channels == 7
        assert sys.path == [str(vendored), *before]
    finally:
        sys.path[:] = before
    (folder / "net.py").write_text("raise RuntimeError('broken model file')\n")
    with pytest.raises(ModelReferenceError, match="RuntimeError: broken model file"):
        build_model(f"{folder / 'net.py'}:build")
    assert sys.path == before


def test_cli_inspects_a_model_file_that_imports_its_siblings(tmp_path, sibling_modules, capsys):
    folder = _model_folder(tmp_path, """\
        from prunefx_test_sibling_layers import block
        def build():
            return block()
    """)
    assert os.getcwd() != str(folder)  # the folder is on sys.path for the import alone, not as the cwd
    code = main(["inspect", f"{folder / 'net.py'}:build", "--input-shape", "1x3x16x16"])
    assert code == 0, capsys.readouterr().err
