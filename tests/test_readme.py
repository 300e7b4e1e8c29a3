"""The README's and the Python API guide's Python examples run as written, and the README's commands exist.
(Every command line in the README and the guides is parsed in full by tests/test_docs.py.)"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from prunefx.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
API_GUIDE = (ROOT / "docs" / "python-api.md").read_text()


def python_block_after(text: str, heading: str) -> str:
    """The first ```python block after `heading` (a line of the page)."""
    return re.search(re.escape(heading) + r"\n.*?```python\n(.*?)```", text, re.DOTALL).group(1)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    block = python_block_after(README, "## A five-minute tour")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["0.5", "True"]
    assert (tmp_path / "out" / "resnet18_pruned.onnx").is_file()


@pytest.mark.slow
def test_readme_cli_commands_are_real_subcommands(capsys):
    shell_blocks = "\n".join(re.findall(r"```sh\n(.*?)```", README, re.DOTALL))
    commands = set(re.findall(r"^prunefx (\w+)", shell_blocks, re.MULTILINE))
    assert commands >= {"inspect", "prune", "bench", "quantize", "check"}
    # One real process checks the `python -m prunefx` entry point; the subcommands' help is parsed here
    # (a process each cost ~4 s of imports).
    done = subprocess.run([sys.executable, "-m", "prunefx", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([command, "--help"])
        assert exit_.value.code == 0, command
        assert f"usage: prunefx {command}" in capsys.readouterr().out


@pytest.mark.slow
def test_api_guide_first_example_runs(tmp_path, monkeypatch, capsys):
    block = python_block_after(API_GUIDE, "## Capture, pass, save, export")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "python-api.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == "20" and printed[-3:] == ["True", "0.5", "True"]
    assert (tmp_path / "out" / "resnet18_folded.onnx").is_file()


@pytest.mark.slow
def test_api_guide_bring_your_own_exported_program_runs(capsys):
    block = python_block_after(API_GUIDE, "## Bring your own exported program")
    namespace: dict = {}
    exec(compile(block, "python-api.md", "exec"), namespace)
    assert capsys.readouterr().out.splitlines()[-2:] == ["True", "True"]
    macs = [prunefx_count(p) for p in (namespace["program"], namespace["result"].program)]
    assert macs[1] <= 0.55 * macs[0]


def prunefx_count(program) -> int:
    from prunefx.graph import count

    return count(program).macs
