"""One cache folder for every cache: latency tables, TensorRT engines and generated scenes all go under
$PRUNEFX_CACHE_DIR (the scenes went under $PRUNEFX_CACHE, the others under $PRUNEFX_CACHE_DIR)."""

from pathlib import Path

import pytest

from prunefx.graph.cache_folder import cache_root
from prunefx.runtime.tables.times_cache import default_cache_dir as table_cache
from prunefx.runtime.tensorrt.engine_cache import default_cache_dir as engine_cache


@pytest.mark.parametrize("variables, expected", [
    ({"PRUNEFX_CACHE_DIR": "/a", "PRUNEFX_CACHE": "/b", "XDG_CACHE_HOME": "/c"}, "/a"),
    ({"PRUNEFX_CACHE": "/b", "XDG_CACHE_HOME": "/c"}, "/b"),  # the scene cache's older name
    ({"XDG_CACHE_HOME": "/c"}, "/c/prunefx"),
    ({}, str(Path.home() / ".cache" / "prunefx")),
])
def test_every_cache_lies_under_the_one_folder(monkeypatch, variables, expected):
    for name in ("PRUNEFX_CACHE_DIR", "PRUNEFX_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert cache_root() == Path(expected)
    assert (table_cache(), engine_cache()) == (Path(expected) / "latency", Path(expected) / "tensorrt")
