"""Accuracy, MACs and latency after every stage of a compress recipe.

A recipe such as prune -> distill -> quantize -> distill delivers one model, but a user deciding whether
the INT8 step or the second distillation was worth it needs each stage's cost and gain. The Pipeline calls
a `StageMeter` after every pass (passes/core/pipeline.py, `after_step`); a pass that left the Program unchanged
gets a row saying so, and a stage whose measurement fails keeps the error in its row instead of failing
the whole run, since the delivered model is measured again at the end in full.

Latency is the short reading the budget searches take (runtime/measure/pairs.py), on the backend, precision and
batch the run measures on: on ONNX Runtime the dense file exported once and timed alternately with each stage's
file, a fake-quantized stage in its INT8 lowering, as it would be delivered.
"""

from __future__ import annotations

from collections.abc import Callable

from prunefx.graph import Program, count
from prunefx.graph.errors import first_line
from prunefx.passes.core.result import Result
from prunefx.runtime.measure.speedup import LatencyPair


class StageMeter:
    """Called as `meter(name, result)` after each pass; `rows` holds one JSON-safe row per stage."""

    def __init__(self, dense: Program, score: Callable[[Program], dict | None], *,
                 latency: LatencyPair, log: Callable[[str], None] = print):
        """`latency`: `(dense, stage) -> (dense ms, stage ms, spread)`, a backend's latency pair (its search
        reading: on ONNX Runtime, TorchScript files, a tenth of dynamo's time on small models; the delivered
        file is exported with dynamo and timed again at the end)."""
        self.dense, self.score, self.log, self.latency = dense, score, log, latency
        self.batch = int(dense.example_inputs[0].shape[0])
        self.rows: list[dict] = []
        self._last_scored: tuple[Program, dict | None] | None = None

    def __call__(self, name: str, result: Result) -> None:
        row: dict = {"stage": len(self.rows) + 1, "pass": name, "modified": bool(result.modified)}
        if result.modified:
            row.update(self._measure(result.program))
        self.rows.append(row)
        self.log(f"[stage {row['stage']} {name}] {stage_summary(row)}")

    def close(self) -> None:
        """Let go of what the latency pair keeps (exported files; on a GPU, the last two models it timed and their
        CUDA graphs or engines), before the final timing prepares its own."""
        if callable(getattr(self.latency, "close", None)):
            self.latency.close()

    def test_score_of(self, program: Program) -> dict | None:
        """The test score of `program` if it is the Program the last stage scored (the recipe's result, unless
        passes after that stage changed nothing), else None: compress scores its result once."""
        if self._last_scored is not None and self._last_scored[0] is program:
            return self._last_scored[1]
        return None

    def _measure(self, program: Program) -> dict:
        measured: dict = {"test": self.score(program),
                          "macs": count(program).macs / self.batch}  # per image, as the final report counts
        self._last_scored = (program, measured["test"])
        try:
            dense_ms, stage_ms, spread = self.latency(self.dense, program)
            measured["latency"] = {"dense_ms": dense_ms, "ms": stage_ms, "speedup": dense_ms / stage_ms,
                                   "spread": spread}
        except Exception as error:  # the delivered model is timed again at the end; a stage's row says why
            measured["latency"] = {"error": first_line(error)}
        return measured


def stage_summary(row: dict) -> str:
    if not row["modified"]:
        return "unchanged"
    test = row.get("test")
    score = "n/a" if test is None else f"{test.get('metric') or 'test'} {100 * test['accuracy']:.2f} %"
    latency = row["latency"]
    timed = (f"latency not measured: {latency['error']}" if "error" in latency
             else f"{latency['ms']:.3f} ms, {latency['speedup']:.2f}x the dense model")
    return f"{score}, {row['macs'] / 1e6:.2f} M MACs, {timed}"


def stages_markdown(rows: list[dict], dense_test: dict | None, dense_macs: float, measured_on: str) -> str:
    """The per-stage table of report.md; `measured_on` says where the latency was timed ('ONNX Runtime, batch 1,
    2 threads')."""
    dense_score = "n/a" if dense_test is None else f"{100 * dense_test['accuracy']:.2f} %"
    lines = ["## After every stage", "",
             f"Test score, MACs per image and latency ({measured_on}, a short reading timed alternately with "
             "the dense model) after each pass of the recipe.", "",
             "| stage | pass | test | MACs | latency | speed-up |", "|---|---|---|---|---|---|",
             f"| 0 | dense | {dense_score} | {dense_macs / 1e6:.2f} M | | 1.00x |"]
    for row in rows:
        if not row["modified"]:
            lines.append(f"| {row['stage']} | `{row['pass']}` | unchanged | | | |")
            continue
        test = row.get("test")
        score = "n/a" if test is None else f"{100 * test['accuracy']:.2f} %"
        latency = row["latency"]
        timed = ([f"not measured: {latency['error']}", ""] if "error" in latency
                 else [f"{latency['ms']:.3f} ms", f"{latency['speedup']:.2f}x"])
        lines.append(f"| {row['stage']} | `{row['pass']}` | {score} | {row['macs'] / 1e6:.2f} M | "
                     + " | ".join(timed) + " |")
    return "\n".join(lines) + "\n"
