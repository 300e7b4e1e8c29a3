"""`-o` that would replace an input, for every command that writes: a folder holding the model, its weights
or its data, and a symbolic link to nowhere, are each refused in one line (exit 2) before any work, and
the input is left as it was."""

from __future__ import annotations

import pytest

from prunefx.cli import main

# Each command that writes an output folder, with the options it needs besides the model and -o.
FOLDER_COMMANDS = {
    "prune": ["--macs", "0.5"],
    "quantize": [],
    "depth": ["--blocks", "1"],
    "compress": ["--data", "fashion-mnist"],
}


def _run(capsys, argv) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err.strip()


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_an_output_folder_holding_the_model_is_refused_before_any_work(tmp_path, capsys, command):
    model = tmp_path / "model.pt2"
    model.write_bytes(b"not loaded: the refusal comes first")
    status, err = _run(capsys, [command, str(model), *FOLDER_COMMANDS[command], "-o", str(tmp_path)])
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "holds the model being read" in err
    assert model.read_bytes() == b"not loaded: the refusal comes first"


def test_an_output_folder_holding_the_weights_or_data_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    status, err = _run(capsys, ["compress", "prunefx:resnet20", "--data", str(data), "-o", str(tmp_path)])
    assert status == 2 and "holds the data being read" in err, err
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    status, err = _run(capsys, ["prune", "prunefx:resnet20", "--weights", str(weights), "--macs", "0.5",
                                "-o", str(tmp_path)])
    assert status == 2 and "holds the weights being read" in err, err


def test_a_model_file_read_through_its_factory_is_an_input_too(tmp_path, capsys):
    """`export m.py:make -o m.py` wrote the ONNX file over the user's source, and `prune DIR/m.py:make -o DIR`
    replaced the folder holding it: the reference was compared as the path 'm.py:make', which exists nowhere."""
    source = tmp_path / "m.py"
    source.write_text("raise SystemExit('not run: the refusal comes first')\n")
    status, err = _run(capsys, ["export", f"{source}:make", "--input-shape", "1x3x8x8", "-o", str(source)])
    assert status == 2 and "is also the model being read" in err, err
    status, err = _run(capsys, ["prune", f"{source}:make", "--macs", "0.5", "-o", str(tmp_path)])
    assert status == 2 and "holds the model being read" in err, err
    assert source.read_text() == "raise SystemExit('not run: the refusal comes first')\n"


def test_an_output_folder_with_the_longest_name_allowed_gets_its_staging_folder_beside_it(tmp_path):
    """The check allows 255 bytes a name, but the hidden staging folder beside it added about 35: a 245-byte name
    failed with 'File name too long' after all the work. The oracle: the file system makes the folder."""
    from prunefx.leftovers import sibling

    for kind in ("partial", "old"):
        hidden = sibling(tmp_path / ("a" * 255), kind)
        hidden.mkdir()
        assert hidden.name.startswith(".aaa") and f".{kind}-" in hidden.name


def test_an_output_next_to_the_model_is_accepted_by_the_check(tmp_path):
    from prunefx.output_paths import check_outputs_spare_inputs

    class Args:
        model = str(tmp_path / "model.pt2")
        output = str(tmp_path / "pruned")

    (tmp_path / "model.pt2").write_bytes(b"")
    check_outputs_spare_inputs(Args())  # a sibling folder holds no input: nothing raised


@pytest.mark.parametrize("command", ["prune", "export"])
def test_an_output_that_is_a_dangling_link_is_refused_before_any_work(tmp_path, capsys, command):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "missing" / "folder")
    extra = FOLDER_COMMANDS.get(command, [])
    status, err = _run(capsys, [command, "prunefx:resnet20", *extra, "-o", str(link)])
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "symbolic link to a path that does not exist" in err
    assert link.is_symlink() and not (tmp_path / "missing").exists()


def _user_folder(tmp_path):
    """A working folder with the user's files, and a link in it to a folder two levels down elsewhere."""
    work, deep = tmp_path / "work", tmp_path / "elsewhere" / "a" / "b"
    (work / "src").mkdir(parents=True)
    deep.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "linkdir").symlink_to(deep)
    return work


def test_an_output_through_a_link_and_dotdot_goes_where_the_system_leads_and_spares_the_current_folder(
        tmp_path, capsys, monkeypatch):
    """`linkdir/../../work` is `elsewhere/work` to the system (`..` of the folder the link names): the checks
    and the writes both go there, and the current folder, which the text seems to name, is left as it was."""
    work = _user_folder(tmp_path)
    monkeypatch.chdir(work)
    status, err = _run(capsys, ["prune", "prunefx:resnet20", "--macs", "0.5", "-o", "linkdir/../../work"])
    assert status == 0, err
    assert sorted(entry.name for entry in work.iterdir()) == ["linkdir", "notes.txt", "src"]
    assert (tmp_path / "elsewhere" / "work" / "model.pt2").is_file()


def test_a_folder_of_the_users_that_the_text_seems_to_name_is_left_alone(tmp_path, capsys, monkeypatch):
    """`linkdir/../out` reads as `out` here, but the system leads to `out` beside the folder the link names:
    the user's own `out` here is neither checked nor replaced."""
    work = _user_folder(tmp_path)
    (work / "out").mkdir()
    (work / "out" / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    status, err = _run(capsys, ["prune", "prunefx:resnet20", "--macs", "0.5", "-o", "linkdir/../out"])
    assert status == 0, err
    assert [entry.name for entry in (work / "out").iterdir()] == ["keep.txt"]
    assert (tmp_path / "elsewhere" / "a" / "out" / "model.pt2").is_file()


def test_an_output_file_named_with_a_trailing_slash_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = _run(capsys, ["export", "prunefx:resnet20", "-o", "newdir/"])
    assert status == 2 and "names a folder" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_tilde_in_an_output_is_the_home_folder(tmp_path, capsys, monkeypatch):
    """`--output=~/out` reaches prunefx unexpanded (the shell expands ~ only at a word's start)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    status, err = _run(capsys, ["export", "prunefx:resnet20", "--output=~/model.onnx"])
    assert status == 0, err
    assert (home / "model.onnx").is_file() and list(work.iterdir()) == []
