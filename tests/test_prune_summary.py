"""The lines `prunefx prune` prints from its report (prunefx/reports/prune_summary.py), read for what they claim."""

from pathlib import Path

from prunefx.reports.prune_summary import summary_lines


def _report(recalibration: dict | None) -> dict:
    return {"params_before": 2_000_000, "params_after": 1_000_000, "macs_before": 4e8, "macs_after": 2e8,
            "groups": [{"width_before": 8, "width_after": 4}], "blocked": [], "budget": None, "compensation": None,
            "recalibrate_batchnorm": recalibration, "module": None,
            "parity": {"max_abs_error": 1e-7, "output_scale": 1.0, "relative": 1e-7, "outputs_constant": False}}


def test_recalibration_is_reported_as_counted_and_a_model_without_batch_norms_says_so():
    done = summary_lines(_report({"recalibrated": 3, "batch_norms": 3, "images": 64}), Path("out"))
    assert "recalibrated 3 of 3 batch norms on 64 images" in done
    none = summary_lines(_report({"recalibrated": 0, "batch_norms": 0, "images": 64}), Path("out"))
    assert "no batch norms to recalibrate" in none and not any(line.startswith("recalibrated") for line in none)
    assert not any("batch norm" in line for line in summary_lines(_report(None), Path("out")))


def test_compensation_is_reported_only_where_a_layer_was_compensated_or_skipped():
    layer = {"layer": "conv", "error_without": 0.2, "error_with": 0.05}
    done = summary_lines({**_report(None), "compensation": {"compensated": [layer], "skipped": []}}, Path("out"))
    assert "compensated 1 layer (0 skipped): relative output error on the calibration data 0.2 -> 0.05 " \
           "(mean over layers)" in done
    skipped = summary_lines({**_report(None), "compensation": {"compensated": [], "skipped": [{"layer": "dw"}]}},
                            Path("out"))
    assert "compensated no layer (1 layer skipped)" in skipped
    nothing = summary_lines({**_report(None), "compensation": {"compensated": [], "skipped": []}}, Path("out"))
    assert not any("compensated" in line for line in nothing)


def test_a_search_that_measured_one_candidate_says_so_in_the_singular():
    row = {"macs_kept": 0.45, "speedup": 2.1, "ms": 1.0, "dense_ms": 2.1, "spread": 0.03}
    budget = {"trace": [row], "budget": "a 2x speed-up", "speedup": 2.1, "ms": 1.0, "dense_ms": 2.1}
    one = summary_lines({**_report(None), "budget": budget}, Path("out"))
    assert one[1].endswith("after 1 candidate")
    again = {"macs_kept": 0.45, "same_widths_as": 0}  # a step back onto the first one's widths: not measured
    two = summary_lines({**_report(None), "budget": {**budget, "trace": [row, again, dict(row, macs_kept=0.4)]}},
                        Path("out"))
    assert two[3].endswith("after 2 candidates")


def test_a_count_takes_the_number_of_its_noun():
    from prunefx.graph.counted import counted

    assert [counted(n, "block") for n in (0, 1, 2)] == ["0 blocks", "1 block", "2 blocks"]
    assert counted(1, "residual branch", "residual branches") == "1 residual branch"
    assert counted(3, "residual branch", "residual branches") == "3 residual branches"
