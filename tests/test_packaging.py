"""The wheel must contain every module of the mapped folders (graph/, passes/, runtime/ -> prunefx.*),
and no code may import those folders by their bare names."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"prunefx": "prunefx", "graph": "prunefx/graph", "passes": "prunefx/passes", "runtime": "prunefx/runtime"}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, cwd=out)
    wheel = next(out.glob("prunefx-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_contains_every_module(wheel_names):
    expected = {f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder, installed in MAPPING.items() for path in (ROOT / folder).rglob("*.py")}
    assert len(expected) > 10
    missing = sorted(expected - wheel_names)
    assert not missing, f"modules missing from the wheel (add their package to pyproject.toml): {missing}"


def test_no_bare_imports_of_mapped_folders():
    bare = re.compile(r"^\s*(from|import)\s+(graph|passes|runtime)\b", re.MULTILINE)
    offenders = [str(path.relative_to(ROOT)) for folder in ("prunefx", "graph", "passes", "runtime", "tests",
                                                            "benchmarks")
                 for path in (ROOT / folder).rglob("*.py") if bare.search(path.read_text())]
    assert offenders == []
