"""benchmarks/gpu_speedup.py in its --smoke mode: the whole script on a CPU stand-in for the GPU (one small
model), checked for what it writes and where; its timings mean nothing here and are not judged."""

from __future__ import annotations

import json
import time

import pytest
import torch

from prunefx.runtime.backends import cuda as cuda_backend

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
SCRIPT = "benchmarks/gpu_speedup.py"


def test_the_smoke_run_writes_every_row_outside_the_results_folder(load_script, tmp_path):
    script = load_script(SCRIPT)
    device = cuda_backend.BACKEND.device
    assert script.main(["--smoke", "--runs", "3", "--out", str(tmp_path)]) == 0
    assert cuda_backend.BACKEND.device is device  # the stand-in is gone after the run
    report = json.loads((tmp_path / "gpu_speedup.json").read_text())
    assert [row["batch"] for row in report["equal_macs"]] == sorted(script.SMOKE_BATCHES, reverse=True)
    for row in report["equal_macs"]:
        assert row["prunefx"]["macs_kept"] == pytest.approx(script.MACS, abs=0.02)
        for name in ("torch-pruning", "torch-pruning r8"):  # every variant measured: an error row fails
            assert "error" not in row[name] and row[name]["macs_kept"] == pytest.approx(script.MACS, abs=0.05)
    # the latency choice at the largest batch alone (where its table was timed), beside the MACs choice, at the
    # MACs the latter kept: the choice stops at those MACs, so a noisy table (timed here on a shared CPU) moves
    # which channels go, not how many MACs stay
    (chosen,) = report["latency_choice"]
    assert chosen["batch"] == max(script.SMOKE_BATCHES) and "error" not in chosen["prunefx"]
    assert chosen["prunefx"]["macs_kept"] == pytest.approx(script.MACS, abs=0.02)
    assert chosen["prunefx latency"]["macs_kept"] == pytest.approx(chosen["prunefx"]["macs_kept"], rel=0.03)
    assert 0.0 < chosen["latency_table"]["fraction"] < 1.0
    assert chosen["latency_table"]["table_entries"] > 0
    predicted = chosen["latency_table"]["predicted_ms"]  # a pruned plan's timed layers take less than the dense's
    assert set(predicted) == {"dense", "prunefx", "prunefx latency"}
    assert 0 < predicted["prunefx"] < predicted["dense"] and 0 < predicted["prunefx latency"] < predicted["dense"]
    (widths,) = report["widths"]  # every multiple timed; ResNet-20's 16 to 64 channels reach half at 8 and 16
    kept = {int(m): entry["macs_kept"] for m, entry in widths["round_to"].items()}
    assert sorted(kept) == list(script.ROUND_TO) and all(k >= script.MACS - 0.03 for k in kept.values())
    assert kept[8] == pytest.approx(script.MACS, abs=0.03) and kept[16] == pytest.approx(script.MACS, abs=0.06)
    assert widths["folded"]["macs_kept"] == pytest.approx(kept[8], abs=0.01)  # folding moves no MACs of a conv
    assert widths["compiled"]["macs_kept"] == kept[8] and widths["compiled"]["speedup"] > 0  # the same model compiled
    (budget,) = report["budgets"]
    assert ("refused" in budget and len(budget["refused"].splitlines()) == 1) or (
        budget["route"] in ("width", "depth", "width+depth") and budget["remeasured"] > 0
        and budget["independent"]["speedup"] > 0
        and budget["independent"]["timer"].startswith("torch.utils.benchmark"))
    assert report["machine"]["gpu"].startswith("none") and "gpu_speedup.md" in {p.name for p in tmp_path.iterdir()}


def test_the_rows_that_decide_come_first(load_script):
    plan = load_script(SCRIPT).plan(["a", "b"], [1, 8, 32], {1: 1.3, 32: 1.5})
    assert plan == [("equal", "a", 32), ("equal", "b", 32), ("latency", "a", 32), ("latency", "b", 32),
                    ("budget", "a", 32), ("budget", "a", 1), ("budget", "b", 32), ("budget", "b", 1),
                    ("widths", "a", 32), ("equal", "a", 8), ("equal", "b", 8), ("equal", "a", 1), ("equal", "b", 1)]


def _latency(model: str, kept: float) -> dict:
    return {"model": model, "batch": 32, "prunefx": {"speedup": 1.2, "macs_kept": 0.5},
            "prunefx latency": {"speedup": 1.4, "macs_kept": kept}}


def test_the_rows_a_published_file_lacks_run_first_one_of_each_missing_kind_leading(load_script, tmp_path):
    script = load_script(SCRIPT)
    published = tmp_path / "gpu_speedup.json"
    published.write_text(json.dumps({"equal_macs": [{"model": "a", "batch": 32}, {"model": "b", "batch": 32}],
                                     "latency_choice": [_latency("a", 0.51), _latency("b", 0.44)],
                                     "budgets": [{"model": "a", "batch": 32, "error": "failed"},
                                                 {"model": "b", "batch": 1, "refused": "by width: 1.18x at best"}],
                                     "widths": []}))
    held = script.published_rows(published)
    # a failed row is not held, nor a refused budget, nor a latency choice at other MACs than the defaults'
    # (no comparison)
    assert held == {("equal", "a", 32), ("equal", "b", 32), ("latency", "a", 32)}
    plan = script.plan(["a", "b"], [1, 32], {1: 1.3, 32: 1.5}, held)
    # the first row of each kind the file has none of, the other rows it lacks, then those it holds (re-measured)
    assert plan == [("budget", "a", 32), ("widths", "a", 32), ("latency", "b", 32), ("budget", "a", 1),
                    ("budget", "b", 32), ("budget", "b", 1), ("equal", "a", 1), ("equal", "b", 1),
                    ("equal", "a", 32), ("equal", "b", 32), ("latency", "a", 32)]
    assert script.published_rows(tmp_path / "none.json") == frozenset()
    assert script.plan(["a"], [32], {32: 1.5}, frozenset()) == script.plan(["a"], [32], {32: 1.5})


class _FakeVariants:
    def __init__(self, reference, batch, **options):
        self.reference, self.captured_batch, self.programs = reference, batch, {"dense": None, "prunefx": None}


def _fake_rows(script, monkeypatch, calls, fail=()):
    """The row functions replaced by fakes that record their calls (and raise for `fail`)."""
    def row(kind):
        def make(variants_or_reference, batch, *rest):
            reference = getattr(variants_or_reference, "reference", variants_or_reference)
            calls.append((kind, reference, batch))
            if (kind, reference, batch) in fail:
                raise ValueError("broken on purpose\nsecond line")
            extra = {"budget": {"speedup_asked": rest[0] if rest else None}, "widths": {"round_to": {}}}.get(kind, {})
            return {"model": reference, "batch": batch, **extra}
        return make
    monkeypatch.setattr(script, "ModelVariants", _FakeVariants)
    monkeypatch.setattr(script, "equal_macs_row", row("equal"))
    monkeypatch.setattr(script, "budget_row", row("budget"))
    monkeypatch.setattr(script, "widths_row", row("widths"))
    latency = row("latency")
    monkeypatch.setattr(script, "latency_row", lambda reference, dense, defaults, batch, *rest: latency(reference, batch))


def _run(script, tmp_path, *extra):
    args = script.parse(["--smoke", "--out", str(tmp_path), "--code", "stamp-a", *extra])
    args.out = tmp_path
    return script.run(args)


def test_a_failing_row_is_recorded_and_the_rest_still_run_each_saved_as_it_ends(load_script, tmp_path, monkeypatch):
    script, calls = load_script(SCRIPT), []
    _fake_rows(script, monkeypatch, calls, fail={("equal", script.SMOKE_MODEL, 4)})
    report = _run(script, tmp_path)
    assert calls == [("equal", script.SMOKE_MODEL, 4), ("latency", script.SMOKE_MODEL, 4),
                     ("budget", script.SMOKE_MODEL, 1), ("widths", script.SMOKE_MODEL, 4),
                     ("equal", script.SMOKE_MODEL, 1)]
    failed = report["equal_macs"][0]
    assert failed["error"] == "ValueError: broken on purpose" and failed["batch"] == 4
    saved = json.loads((tmp_path / "gpu_speedup.json").read_text())  # written after each row, by run itself
    assert saved["equal_macs"] == report["equal_macs"] and saved["budgets"] == report["budgets"]
    assert "failed: prunefx:resnet20 at batch 4: ValueError: broken on purpose" in (tmp_path / "gpu_speedup.md").read_text()


def test_a_widths_row_prunes_nothing_it_does_not_read_and_each_model_is_captured_once(load_script, tmp_path,
                                                                                     monkeypatch):
    script, calls, made = load_script(SCRIPT), [], []
    _fake_rows(script, monkeypatch, calls)
    monkeypatch.setattr(script, "model_and_program",
                        lambda reference, input_shape: (made.append(("capture", reference, input_shape)), None,
                                                        _FakeProgram())[1:])
    monkeypatch.setattr(script, "_prunefx_defaults", lambda dense: made.append(("defaults",)) or _FakeProgram())
    model = script.SMOKE_MODEL
    monkeypatch.setattr(script, "plan", lambda *args: [("widths", model, 4)])
    _run(script, tmp_path)
    assert calls == [("widths", model, 4)] and [step[0] for step in made] == ["capture"]  # no defaults pruned
    calls.clear(), made.clear()
    monkeypatch.setattr(script, "plan", lambda *args: [("latency", model, 4), ("widths", model, 4)])
    _run(script, tmp_path)
    assert calls == [("latency", model, 4), ("widths", model, 4)]
    assert [step[0] for step in made] == ["capture", "defaults"]  # the widths row reads the latency row's dense


class _FakeProgram:
    def eval(self):
        return self


def test_a_resumed_run_keeps_the_rows_of_the_same_code_and_machine_and_measures_the_rest(load_script, tmp_path,
                                                                                         monkeypatch):
    script, calls = load_script(SCRIPT), []
    _fake_rows(script, monkeypatch, calls)
    earlier = _run(script, tmp_path)
    earlier["equal_macs"].pop()  # as if the run had stopped before its last row
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    calls.clear()
    again = _run(script, tmp_path, "--resume", str(tmp_path / "earlier.json"))
    assert calls == [("equal", script.SMOKE_MODEL, 1)] and len(again["equal_macs"]) == 2
    calls.clear()
    _run(script, tmp_path, "--resume", str(tmp_path / "earlier.json"), "--code", "stamp-b")  # other code: afresh
    assert len(calls) == 5


def test_a_row_starts_only_where_the_longest_of_its_kind_still_fits(load_script, tmp_path, monkeypatch):
    """Each row records its seconds; with less time left than the longest finished row of its kind, the next
    is skipped rather than cut off half-way. A row of a kind not yet timed is expected to take as long as the
    longest row of any kind: the first row alone starts unguarded."""
    script, calls = load_script(SCRIPT), []
    _fake_rows(script, monkeypatch, calls)
    quick_budget, quick_equal = script.budget_row, script.equal_macs_row
    monkeypatch.setattr(script, "budget_row", lambda *args: (time.sleep(2.0), quick_budget(*args))[1])
    report = _run(script, tmp_path, "--time-limit", "3.5")  # room for the quick rows and one slow one
    assert calls == [("equal", script.SMOKE_MODEL, 4), ("latency", script.SMOKE_MODEL, 4),
                     ("budget", script.SMOKE_MODEL, 1), ("equal", script.SMOKE_MODEL, 1)]
    assert report["budgets"][0]["seconds"] >= 2.0  # the widths row, not timed yet, is expected to take as long:
    assert report["skipped"] == [f"{script.SMOKE_MODEL}: width multiples at batch 4 (time limit)"]

    monkeypatch.setattr(script, "equal_macs_row", lambda *args: (time.sleep(2.0), quick_equal(*args))[1])
    calls.clear()
    report = _run(script, tmp_path, "--time-limit", "3.5")  # the slow first row leaves room for no other
    assert calls == [("equal", script.SMOKE_MODEL, 4)] and report["equal_macs"][0]["seconds"] >= 2.0
    assert report["skipped"] == [f"{script.SMOKE_MODEL}: latency choice at batch 4 (time limit)",
                                 f"{script.SMOKE_MODEL}: --speedup 1.1 at batch 1 (time limit)",
                                 f"{script.SMOKE_MODEL}: width multiples at batch 4 (time limit)",
                                 f"{script.SMOKE_MODEL}: equal-MACs row at batch 1 (time limit)"]

    # an earlier file's rows say how long a row takes before this run has timed one, whatever code made them
    monkeypatch.setattr(script, "equal_macs_row", quick_equal)
    earlier = {"machine": {"code": "other"}, "equal_macs": [{"seconds": 0.5}], "widths": [{"seconds": 1000.0}],
               "budgets": []}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    calls.clear()
    report = _run(script, tmp_path, "--time-limit", "3.5", "--resume", str(tmp_path / "earlier.json"))
    assert ("widths", script.SMOKE_MODEL, 4) not in calls and ("equal", script.SMOKE_MODEL, 4) in calls
    assert f"{script.SMOKE_MODEL}: width multiples at batch 4 (time limit)" in report["skipped"]
    assert f"{script.SMOKE_MODEL}: --speedup 1.1 at batch 1 (time limit)" in report["skipped"]  # none timed: 1000 s


def test_a_torch_pruning_search_that_runs_long_or_is_killed_is_a_one_line_failure(load_script, tmp_path, monkeypatch):
    script = load_script(SCRIPT)
    child = tmp_path / "child.py"
    child.write_text("import os, signal, sys, time\n"
                     "time.sleep(30) if sys.argv[1] == 'slow' else os.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setattr(script, "TORCH_PRUNING_SCRIPT", child)
    started = time.monotonic()
    slow = [script.TorchPruningSearch("slow", 0.5, round_to, tmp_path, timeout=4) for round_to in (None, 8)]
    for search in slow:  # started together, they end together: the second waits out only what is left of its 4 s
        with pytest.raises(RuntimeError, match=r"took more than 4 s"):
            search.module()
    assert time.monotonic() - started < 7 and all(search.process.poll() is not None for search in slow)
    with pytest.raises(RuntimeError, match=r"killed \(signal 9; out of memory\?\)"):
        script.TorchPruningSearch("killed", 0.5, None, tmp_path, timeout=30).module()


def test_searches_started_a_model_ahead_have_run_meanwhile_and_none_outlives_the_run(load_script, tmp_path,
                                                                                    monkeypatch):
    """A stand-in search sleeps for the seconds its model's name gives, then writes a saved module: started a
    model ahead, it has finished by the time its row asks; one still running when the run ends is stopped."""
    script = load_script(SCRIPT)
    saved = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(2, 1), saved)
    child = tmp_path / "child.py"
    child.write_text("import shutil, sys, time\n"
                     "time.sleep(float(sys.argv[1].split(':')[1]))\n"
                     f"shutil.copy({str(saved)!r}, sys.argv[sys.argv.index('--save') + 1])\n")
    monkeypatch.setattr(script, "TORCH_PRUNING_SCRIPT", child)
    ahead = script.SearchesAhead(tmp_path / "searches", timeout=30)
    ahead.start("next:2")
    time.sleep(2.5)  # the model before timed on the GPU meanwhile
    asked = time.monotonic()
    found = ahead.modules("next:2")
    assert time.monotonic() - asked < 1.5 and set(found) == {"torch-pruning", "torch-pruning r8"}
    assert all(isinstance(module, torch.nn.Linear) for module in found.values())
    ahead.start("last:30")
    running = [search.process for search in ahead.started["last:30"].values()]
    ahead.stop()
    assert all(process.poll() is not None for process in running) and not ahead.started
    brief = script.SearchesAhead(tmp_path / "brief", timeout=1)  # a row never came for it: stopped when overdue
    brief.start("skipped:30")
    running = [search.process for search in brief.started["skipped:30"].values()]
    brief.drop_overdue()
    assert "skipped:30" in brief.started  # not yet overdue
    time.sleep(1.2)
    brief.drop_overdue()
    assert all(process.poll() is not None for process in running) and not brief.started


def test_smoke_results_are_never_published_and_a_real_run_needs_a_gpu(load_script, capsys):
    script = load_script(SCRIPT)
    assert script.main(["--smoke", "--out", str(script.RESULTS)]) == 2
    assert "not published" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert script.main([]) == 2 and "needs an NVIDIA GPU" in capsys.readouterr().err


def test_torch_pruning_keeps_attention_heads_whole_on_a_vit(load_script):
    """The baseline on a timm ViT: heads keyed by their qkv projection, each head narrowed alike, the module's
    reshape following (it failed with "shape '[1, 197, 3, 3, 64]' is invalid" before)."""
    timm = pytest.importorskip("timm")
    baseline = load_script("benchmarks/torch_pruning_baseline.py")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    pruned, reached = baseline.prune_to_macs(model, example, 0.5, round_to=8)
    attention = baseline._attention_modules(pruned)
    assert attention and all(m.num_heads == 3 for m in attention)  # vit_tiny's heads, all kept
    assert all(m.qkv.out_features == 3 * m.num_heads * m.head_dim and m.head_dim < 64 for m in attention)
    assert all(m.head_dim % 8 == 0 for m in attention) and reached["macs_kept"] == pytest.approx(0.5, abs=0.06)
    assert pruned(example).shape == (1, 10)


def test_torch_pruning_prunes_a_torchvision_vit_as_its_example_does(load_script):
    """The baseline on torchvision's ViT (an nn.MultiheadAttention per block, a forward() that reshapes the patches
    by `hidden_dim`): widths a multiple of the 8 asked and of the 4 heads, hidden_dim following the patch
    embedding. It failed with "shape '[1, 768, 196]' is invalid" before, a failed cell in gpu_speedup's table."""
    from torchvision.models.vision_transformer import VisionTransformer
    baseline = load_script("benchmarks/torch_pruning_baseline.py")
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=96, mlp_dim=192,
                              num_classes=10).eval()
    pruned = baseline.prune_at(model, torch.randn(1, 3, 32, 32), 0.5, round_to=8)
    width = pruned.conv_proj.out_channels
    assert width < 96 and width % 8 == 0 and width % 4 == 0 and pruned.hidden_dim == width
    assert all(layer.self_attention.embed_dim == width for layer in pruned.encoder.layers)
    assert pruned(torch.randn(3, 3, 32, 32)).shape == (3, 10)  # another batch than the traced one
