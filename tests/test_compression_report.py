"""What `prunefx compress` prints and writes into report.md about its latency, and a budget's table about its
depth setting, read for what they claim."""

from prunefx.reports.compression import console_summary, summary_rows


def _report(**latency) -> dict:
    scored = {"metric": "accuracy", "accuracy": 0.9, "count": 10}
    return {"accuracy": {"before": {"test": scored, "val": None}, "after": {"test": scored, "val": None}},
            "latency": {"backend": "onnxruntime", "batch_size": 1, "threads": 1, "dense_ms": 2.0, "compressed_ms": 1.0,
                        "speedup": 2.0, "runs": 50, "warmup": 10, "rounds": 4, **latency},
            "macs_before": 2e6, "macs_after": 1e6, "params_before": 1e6, "params_after": 5e5,
            "parity": {"max_abs_error": 1e-7, "output_scale": 1.0, "relative": 1e-7, "outputs_constant": False}}


def test_a_compressed_model_measured_slower_is_called_slower():
    """A 0.80x speed-up read '0.80x faster'."""
    latency = summary_rows(_report(dense_ms=1.0, compressed_ms=1.25, speedup=0.8))[-1]
    assert latency[-1] == "1.25x slower"
    assert summary_rows(_report())[-1][-1] == "2.00x faster"


def test_a_backend_that_times_one_model_after_the_other_is_not_said_to_alternate():
    """trtexec runs each model in its own process, one after the other: the line said 'measured alternately in one
    process'."""
    note = "trtexec runs one after the other, not alternately"
    trtexec = console_summary(_report(backend="trtexec", rounds=1, measurement={"note": note}, warmup=None))
    assert f"speed-up ({note}), 50 runs each" in trtexec and "measured alternately" not in trtexec
    assert "speed-up measured alternately in 4 fresh processes, 50 runs each" in console_summary(_report())


def test_a_speed_up_measured_on_a_busy_machine_is_said_to_be():
    """report.json's `latency.contention` (the share of the cores other processes took) from 0.1 on: a note."""
    busy = console_summary(_report(contention=0.37)).splitlines()[-1]
    assert busy.startswith("note: other processes took 37 % of the cores while the speed-up was measured")
    for quiet in (0.02, None):
        assert "note:" not in console_summary(_report(contention=quiet))


def test_report_md_names_a_warm_up_only_where_the_backend_read_one():
    from prunefx.reports.compression import markdown_report

    def markdown(**latency) -> str:
        return markdown_report({**_report(**latency), "model": "m", "recipe": {"name": "r"}, "data": "d",
                                "batch_size": 8, "input_shape": [8, 3, 32, 32], "eval_batches": None, "passes": [],
                                "seconds": {"total": 10.0, "pipeline": 5.0}})

    note = "trtexec runs one after the other, not alternately"
    trtexec = markdown(backend="trtexec", rounds=1, measurement={"note": note}, warmup=None)
    assert f"50 timed runs per model, ({note}); speed-up" in trtexec and "warm-up" not in trtexec
    assert "10 warm-up and 50 timed runs per model, measured alternately in 4 fresh processes" in markdown()


def test_a_budget_s_depth_setting_says_whether_its_blocks_were_merged_or_their_branches_dropped():
    """Where no block merges (ConvNeXtV2's GRN) the depth route drops residual branches: the table said '2 blocks
    merged' all the same."""
    from prunefx.passes.budget.candidates import Combination
    from prunefx.reports.budget import budget_markdown

    dropped = Combination(("depth",), blocks=["stages.1.blocks.0", "stages.2.blocks.1"], depth_route="drop")
    merged = Combination(("depth",), blocks=["layer1.0"], depth_route="merge")
    assert dropped.to_dict()["depth_route"] == "drop"
    stats = {"budget": "a 1.5x speed-up", "chosen": ["depth"], "speedup": 1.6, "ms": 1.0, "dense_ms": 1.6,
             "candidates": [dropped.to_dict(), merged.to_dict()]}
    table = budget_markdown(stats, chart=None)
    assert "| depth | 2 blocks dropped | no |" in table and "| depth | 1 block merged | no |" in table
