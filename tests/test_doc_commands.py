"""Every shell block of the README, getting started and the how-to guides is run as written, in order, in a
fresh folder, the way a reader pastes it: `prunefx` and `python` from this checkout's .venv on PATH, `~`
a fresh home. Nothing in a command is rewritten. The inputs a page names as the reader's own
(`path/to/images`, `resnet18.pth`, ...) are made, small, before the page runs.

A block says how it is tested in an HTML comment on the line above its fence (invisible on GitHub and on
the site), `<!-- doc-test: KIND ... -->`:
- no comment: run in `make test`'s lane, so it must be cheap (tens of seconds);
- `zoo`: run in `make test-zoo` (minutes: a budget search on a 224x224 model, a training run);
- `dry-run`: commands that cannot run inside a test (make's own targets, a server, a benchmark of an hour):
  `make -n TARGET` must succeed, a Python script's parser must define every option the command uses, and
  any other command's `--help` must succeed and list them;
- `needs tensorrt`: run in the zoo lane where `tensorrt` imports and a CUDA device is present, else skipped
  with that reason (checked: the probe says the machine lacks it);
- `needs ultralytics`: the same where `ultralytics` imports (AGPL-3.0: installed by the reader, never by
  prunefx), else skipped with that reason;
- `covered-by tests/FILE.py::TEST`: the reader's own data sets and models; that test runs the same
  command on written stand-ins, and must exist.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"(?:^<!-- doc-test: (.*?) -->\n)?^```(?:sh|bash)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
KINDS = ("run", "zoo", "dry-run", "needs", "covered-by")


def howto_pages() -> list[Path]:
    """The pages under the site's "How-to guides" heading (mkdocs.yml), so a new guide is tested from its start."""
    nav = (ROOT / "mkdocs.yml").read_text().split("  - How-to guides:\n", 1)[1]
    section = re.split(r"^  - ", nav, maxsplit=1, flags=re.MULTILINE)[0]
    return [DOCS / path for path in re.findall(r":\s*(\S+\.md)$", section, re.MULTILINE)]


PAGES = [ROOT / "README.md", DOCS / "getting-started.md", *howto_pages()]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    kind: str
    argument: str
    text: str


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        kind, _, argument = (match.group(1) or "run").partition(" ")
        found.append(Block(page, text[:match.start(2)].count("\n"), kind, argument.strip(), match.group(2)))
    return found


def commands(block: Block) -> list[list[str]]:
    """The block's command lines as words (continuations joined, comments dropped)."""
    lines = block.text.replace("\\\n", " ").splitlines()
    return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def tensorrt_missing() -> str | None:
    """Why a `needs tensorrt` block cannot run here, or None where it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA device"


def ultralytics_missing() -> str | None:
    """Why a `needs ultralytics` block cannot run here: Ultralytics is AGPL-3.0, never a dependency of
    prunefx, so only a reader who installed it (and a machine where someone did) runs these blocks."""
    if importlib.util.find_spec("ultralytics") is None:
        return "ultralytics is not installed (AGPL-3.0, never a prunefx dependency: pip install ultralytics)"
    return None


NEEDS = {"tensorrt": tensorrt_missing, "ultralytics": ultralytics_missing}


def _images(folder: Path, count: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"{index:03d}.jpg")


def _image_folder(root: Path) -> None:
    for split, count in (("train", 16), ("val", 8)):
        for label in ("cat", "dog"):
            _images(root / split / label, count, seed=len(label) + count)


def _state_dict(reference: str):
    def write(path: Path) -> None:
        import torch

        from prunefx.models import build_model

        torch.manual_seed(0)
        torch.save(build_model(reference).module.state_dict(), path)
    return write


def _yolo_data(path: Path) -> None:
    """A YOLO data yaml with its images and labels beside it: Fashion-MNIST scenes (prunefx/data/scene_files.py)."""
    from prunefx.data import fashion_mnist
    from prunefx.data.fashion_mnist_scenes import SceneConfig, make_scenes
    from prunefx.data.scene_files import write_scenes

    items, classes = fashion_mnist.load_fashion_mnist("test")
    scenes = {split: make_scenes(items, classes, count, split=split, config=SceneConfig(size=64), seed=0)
              for split, count in (("train", 16), ("val", 8))}
    write_scenes(scenes, path.parent, "yolo")


# A reader's fine-tuned classifier: torchvision's ResNet-18 with the stand-in ImageFolder's 2 classes.
CLASSIFIER = "import torchvision\n\n\ndef build():\n    return torchvision.models.resnet18(num_classes=2)\n"


def _classifier_weights(path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), path)


# The reader's own inputs a page names, made small where the page runs; nothing else in a command changes.
INPUTS = {"path/to/images": lambda path: _images(path, 16, seed=0), "path/to/imagefolder": _image_folder,
          "resnet18.pth": _state_dict("torchvision:resnet18"), "dense.pth": _state_dict("prunefx:resnet20"),
          "~/data/flowers": _image_folder, "data.yaml": _yolo_data,
          "classifier.py": lambda path: path.write_text(CLASSIFIER), "classifier.pth": _classifier_weights}


def workspace(folder: Path, text: str) -> dict:
    """A folder laid out like the checkout (.venv, examples, benchmarks linked) with the inputs `text` names,
    and the environment a reader's shell has after `make setup`."""
    for name in (".venv", "examples", "benchmarks"):
        (folder / name).symlink_to(ROOT / name)
    (folder / "home").mkdir(exist_ok=True)
    for name, make in INPUTS.items():
        path = folder / name.replace("~", "home", 1)
        if name in text and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path)
    return dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", HOME=str(folder / "home"),
                OMP_NUM_THREADS="1", YOLO_OFFLINE="1")


def run_block(block: Block, folder: Path, env: dict, timeout: int) -> None:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{block.page.name}:{block.line}: exit {done.returncode}\n{block.text}"
                                  f"{done.stderr[-2000:]}")


def script_options(script: Path) -> set[str]:
    """The option strings a script's argparse defines (read from its source: importing a benchmark takes
    seconds of torch imports, and its options are all this check needs)."""
    calls = (node for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Call))
    return {arg.value for call in calls if getattr(call.func, "attr", None) == "add_argument"
            for arg in call.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)}


def dry_run(block: Block, env: dict) -> None:
    """make's targets by `make -n`; a Python script by the options its parser defines; anything else by its
    --help, which must list every option used."""
    for words in commands(block):
        used = {word.split("=")[0] for word in words if word.startswith("--")}
        where = f"{block.page.name}:{block.line}: `{shlex.join(words)}`"
        if words[0].endswith("python") and words[1].endswith(".py"):
            assert used <= script_options(ROOT / words[1]), (where, used - script_options(ROOT / words[1]))
            continue
        command = ["make", "-n", *words[1:]] if words[0] == "make" else [*words[:2], "--help"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, f"{where}\n{done.stderr[-1500:]}"
        assert words[0] == "make" or all(option in done.stdout for option in used), where


def covered(block: Block) -> None:
    """`covered-by tests/FILE.py::TEST ...`: each test named exists."""
    for reference in block.argument.split():
        path, _, name = reference.partition("::")
        tree = ast.parse((ROOT / path).read_text())
        assert name in {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}, reference


def run_page(page: Path, folder: Path, lane: str) -> list[str]:
    """Run the page's blocks of `lane` in order; the reasons of those skipped."""
    skipped = []
    env = workspace(folder, page.read_text())
    for block in blocks(page):
        assert block.kind in KINDS, f"{page.name}:{block.line}: unknown doc-test kind {block.kind!r}"
        if block.kind == "dry-run" and lane == "main":
            dry_run(block, env)
        elif block.kind == "covered-by" and lane == "main":
            covered(block)
        elif block.kind == "run" or (block.kind == "zoo" and lane == "zoo"):
            run_block(block, folder, env, timeout=300 if lane == "main" else 3600)
        elif block.kind == "needs" and lane == "zoo":
            reason = NEEDS[block.argument]()
            if reason is None:
                run_block(block, folder, env, timeout=3600)
            else:
                skipped.append(f"{page.name}:{block.line}: needs {block.argument}: {reason}")
    return skipped


def test_blocks_and_their_kinds_are_read_from_the_page(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```sh\nprunefx a \\\n  --b 1  # why\n```\n\n<!-- doc-test: needs tensorrt -->\n"
                    "```bash\nprunefx c\n```\n```python\nx = 1\n```\n")
    first, second = blocks(page)
    assert (first.kind, commands(first)) == ("run", [["prunefx", "a", "--b", "1"]])
    assert (second.kind, second.argument, commands(second)) == ("needs", "tensorrt", [["prunefx", "c"]])
    assert {page.name for page in howto_pages()} >= {"prune-torchvision.md", "int8-tensorrt.md", "your-data.md"}


@pytest.mark.parametrize("text", [".venv/bin/python benchmarks/latency_budget.py --no-such-option\n",
                                  "make no-such-target\n", ".venv/bin/mkdocs serve --no-such-option\n"])
def test_a_dry_run_fails_on_an_option_or_target_that_does_not_exist(text):
    with pytest.raises(AssertionError):
        dry_run(Block(ROOT / "README.md", 1, "dry-run", "", text), dict(os.environ))


def test_every_needs_names_a_probe_that_agrees_with_the_machine():
    import torch

    for page in PAGES:
        for block in blocks(page):
            if block.kind == "needs":
                assert block.argument in NEEDS, (page.name, block.line)
    has_trt = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
    assert (tensorrt_missing() is None) == has_trt
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        assert ultralytics_missing() is not None
    else:
        assert ultralytics_missing() is None


def test_the_yolo_data_a_page_names_is_written_where_it_names_it(tmp_path):
    pytest.importorskip("yaml")
    from prunefx.data.formats import detect_format

    workspace(tmp_path, "python examples/x.py --data data.yaml")
    assert detect_format(tmp_path / "data.yaml") == "yolo"
    assert len(list((tmp_path / "labels" / "train").glob("*.txt"))) == 16


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_page_commands_run(page, tmp_path):
    run_page(page, tmp_path, "main")


# timing too: the pages' --speedup searches, run beside another test, read too noisy to decide (README's ResNet-18
# 2x: 2.66x on 1.84-3.20, refused), so `make test-zoo` runs these alone after the parallel part
@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.timing
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_page_commands_run_in_full(page, tmp_path):
    skipped = run_page(page, tmp_path, "zoo")
    if skipped:
        pytest.skip("; ".join(skipped))
