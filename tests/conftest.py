"""Shared fixtures for the test suite."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from prunefx.graph.attributes import get_tensor
from prunefx.graph.channels.removal import expand_removed

ROOT = Path(__file__).resolve().parents[1]


def _zero_channels(program, combing, removed: set[int]) -> None:
    """Zero every slice of every tensor that the removed classes touch (after expanding them over the
    grids they control), so that removing them afterwards must not change the outputs. Running
    variances become 1 instead, so that a batch norm maps the zeroed channels to exactly zero."""
    analysis = combing.analysis
    gone = np.array(sorted(expand_removed(analysis, set(removed))), dtype=np.int64)
    for node in program.graph.nodes:
        if node.op != "get_attr":
            continue
        tensor = get_tensor(program.module, node.target)
        for dim, labels in enumerate(analysis.node_labels[node]):
            mask = np.isin(analysis.classes[labels], gone)
            if mask.any():
                with torch.no_grad():
                    tensor.index_fill_(dim, torch.from_numpy(np.flatnonzero(mask)),
                                       1.0 if "running_var" in node.target else 0.0)


def _script(relative: str):
    """A repository script (benchmarks/NAME.py, scripts/NAME.py) loaded from its path as module NAME: those
    folders are not packages."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def schema_errors():
    """`schema_errors(report)`: where a report.json departs from the published docs/reference/report.schema.json
    (tests/test_report_schema.py runs each command for it; the demo's and quantize's own tests use this)."""
    import json

    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads((ROOT / "docs" / "reference" / "report.schema.json").read_text()))
    return lambda report: [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
                           for error in validator.iter_errors(report)]


@pytest.fixture(scope="session")
def png_pixels():
    """`png_pixels(path)`: the RGB pixels of a PNG file, after checking its signature and that Pillow verifies it
    (the charts of deployment and compress reports)."""
    import numpy as np
    from PIL import Image

    def read(path):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    return read


@pytest.fixture(scope="session")
def load_script():
    """`load_script("benchmarks/gpu_speedup.py")`: that script as a freshly loaded module."""
    return _script


@pytest.fixture(scope="session")
def zero_channels():
    """The function `zero_channels(program, combing, removed)` (see `_zero_channels`). Session-scoped
    since it is stateless, so hypothesis tests can use it without the function-scoped-fixture check."""
    return _zero_channels


def _remove_zeroed_and_compare(program, combing, removed: set[int], inputs, *, tolerance: float = 1e-5) -> None:
    """Zero the channels `removed` (see `_zero_channels`), remove them, and assert that the program
    verifies and its outputs did not move beyond `tolerance` relative to their largest magnitude."""
    import torch.utils._pytree as pytree

    from prunefx.graph import verify
    from prunefx.graph.channels.removal import remove_classes

    inputs = inputs if isinstance(inputs, tuple) else (inputs,)

    def outputs():
        with torch.no_grad():
            return torch.cat([t.flatten() for t in pytree.tree_leaves(program(*inputs))])

    _zero_channels(program, combing, removed)
    expected = outputs()
    assert remove_classes(program.module, combing.analysis, removed)
    program.recompile()
    verify(program)
    actual = outputs()
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= tolerance * expected.abs().max().item() + 1e-6


@pytest.fixture(scope="session")
def removal_is_exact():
    """`removal_is_exact(program, combing, removed, inputs)`: zero, remove, verify, same outputs."""
    return _remove_zeroed_and_compare


@pytest.fixture(autouse=True)
def stand_in_gpus_need_no_warm_up(monkeypatch):
    """Without a GPU, the GPU runners tests time are stand-ins with no clocks to ramp up: the time-based
    warm-up of runtime/measure/gpu_latency.py (WARM_SECONDS) would only spin. On a GPU it stays."""
    if not torch.cuda.is_available():
        from prunefx.runtime.measure import gpu_latency

        monkeypatch.setattr(gpu_latency, "WARM_SECONDS", 0.0)


@pytest.fixture(autouse=True)
def exports_start_afresh():
    """Each test's exports export (runtime/onnx/export_memo.py copies a file exported before in the process): a
    test that makes the exporter fail, or counts its exports, is not answered by another test's file."""
    from prunefx.runtime.onnx.export_memo import forget_written

    forget_written()


@pytest.fixture
def file_size_limit():
    """`with file_size_limit(n):` files written in the block cannot grow past n bytes, as on a full disk: a
    write past the limit raises OSError (EFBIG) instead of the process being killed. The limit goes after."""
    resource = pytest.importorskip("resource")  # POSIX only

    @contextlib.contextmanager
    def limited(size: int):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if hard != resource.RLIM_INFINITY and hard < size:
            pytest.skip(f"the hard file-size limit ({hard} bytes) is below the test's")
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)
    return limited


@pytest.fixture
def one_thread():
    """Tests on tiny inputs: one intra-op thread is as fast, and on a busy machine a spinning thread
    pool makes each forward pass a hundred times slower. The caller's thread count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _listed(name: str) -> tuple[set[str], set[str]]:
    """(modules, node ids) listed in tests/NAME: slow_tests.txt (measured heavy, written by scripts/slow_tests.py)
    or zoo_lane.txt (breadth left to `make test-zoo`, chosen by hand)."""
    listed = Path(__file__).with_name(name)
    entries = [line.strip() for line in listed.read_text().splitlines() if line.strip() and not line.startswith("#")] \
        if listed.exists() else []
    return {entry for entry in entries if "::" not in entry}, {entry for entry in entries if "::" in entry}


def pytest_collection_modifyitems(config, items):
    """Tests measured heavy (tests/slow_tests.txt) get the `slow` mark, which keeps `make test-fast` under four
    minutes. Breadth gets the `zoo` mark, so `make test` leaves it to `make test-zoo` (runs before `-m` deselects):
    the tests listed in tests/zoo_lane.txt, and the cases of the model references a module lists in ZOO_LANE."""
    lanes = [(pytest.mark.slow, *_listed("slow_tests.txt")), (pytest.mark.zoo, *_listed("zoo_lane.txt"))]
    for item in items:
        for mark, modules, tests in lanes:
            if item.nodeid in tests or item.nodeid.split("::")[0] in modules:
                item.add_marker(mark)
        heavy = getattr(getattr(item, "module", None), "ZOO_LANE", ())
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("reference") in heavy:
            item.add_marker(pytest.mark.zoo)


@pytest.fixture(scope="module", autouse=True)
def _imports_out_of_collections():
    """What a worker has imported and kept so far (torch, onnx, the fixtures that outlive a module) is left out of
    the garbage collector's scans from each test module on: the full collections (the library's own in
    runtime/onnx/export.py and the automatic ones) then cost what the module's tests allocate, not the millions of
    objects of every module the worker has imported. Collected first, so no garbage is kept for good."""
    gc.collect()
    gc.freeze()


class _SmallNet(torch.nn.Module):
    """A conv and a linear layer: the smallest model whose `.pt2` has weights, a graph and shape expressions."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def small_net_class():
    """The class behind `good_archive`, for tests that rebuild its weights from the same seed."""
    return _SmallNet


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory):
    """A genuine `.pt2` (1x3x8x8 input) for the hostile-file tests to tamper with."""
    from prunefx.graph import capture

    path = tmp_path_factory.mktemp("good") / "net.pt2"
    torch.manual_seed(0)
    capture(_SmallNet().eval(), torch.randn(1, 3, 8, 8), name="net").save(path)
    return path
