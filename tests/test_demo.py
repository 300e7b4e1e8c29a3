"""`prunefx demo`: the budget story on the shipped Fashion-MNIST checkpoint, and its refusal of a checkpoint
that does not match its recorded sha256. The search's measuring function is replaced by one whose latency
is proportional to MACs, so the run does not hang on a loaded machine's timing (benchmarks and `make demo`
measure for real)."""

import importlib
import json
import shutil

import pytest

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.data import fashion_mnist
from prunefx.graph import count

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST missing")]
demo = importlib.import_module("prunefx.commands.demo")


def macs_latency(**kwargs):
    def latency(dense, candidate):
        return count(dense).macs / 1e7, count(candidate).macs / 1e7, 0.0
    return latency


@pytest.mark.slow  # not timing: the search measures MACs (above), so it asserts nothing a busy machine can move
def test_the_demo_meets_its_budget_and_tells_where_the_time_went(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(demo, "onnx_latency_pair", macs_latency)
    code = main(["demo", "--speedup", "1.5", "--kd-steps", "2", "--eval-images", "512", "--runs", "5",
                 "--threads", "1", "-o", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0
    for stage in ("[load]", "[dense]", "[budget]", "  candidate:", "[one-shot]", "[kd]", "[measured]", "[time]"):
        assert stage in out, out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["dense_accuracy"] > 0.7  # the trained checkpoint (78 % on the test set); chance is 0.10
    assert report["budget"]["met"] and report["budget"]["speedup"] >= 1.5 and report["budget"]["confirmed"]
    assert 0.0 <= report["one_shot_accuracy"] <= 1.0 and 0.0 <= report["kd_accuracy"] <= 1.0
    assert report["eval_images"] == 512 and report["measured"]["parity"]["relative"] < 1e-4
    assert set(report["seconds"]) >= {"load", "budget search", "distill", "export and measure"}
    assert all((tmp_path / "demo" / name).is_file() for name in ("model.onnx", "dense.onnx", "model.pt2"))


def test_a_checkpoint_that_does_not_match_its_sha256_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    copy = tmp_path / demo.CHECKPOINT.name
    shutil.copy(demo.CHECKPOINT, copy)
    shutil.copy(demo.CHECKPOINT.with_suffix(".json"), copy.with_suffix(".json"))
    with copy.open("ab") as file:
        file.write(b"\0")
    monkeypatch.setattr(demo, "CHECKPOINT", copy)
    code = main(["demo", "-o", str(tmp_path / "never")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1 and "does not match its recorded sha256" in lines[0]
    assert not (tmp_path / "never").exists()
