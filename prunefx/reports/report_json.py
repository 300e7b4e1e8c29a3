"""report.json, built one way for every command (prune, depth, compress, quantize, demo) from typed facts
(prunefx/reports/report_facts.py). Every report holds the same common keys, null where a command did not do
that step, whichever budget route met the budget; a command's own keys sit beside them. The shape is
published as docs/reference/report.schema.json and tests/test_report_schema.py checks every command's."""

from __future__ import annotations

import json
from pathlib import Path

from prunefx.budget.outcome import BudgetOutcome
from prunefx.reports.compression import json_safe
from prunefx.reports.report_facts import Latency, LatencySkipped, ReportFacts

SCHEMA_VERSION = 1  # raised when a common key changes meaning or goes; a new key does not


def report_json(facts: ReportFacts) -> dict:
    """The report as a plain mapping: the common keys, then the command's own."""
    common = {"schema_version": SCHEMA_VERSION, "command": facts.command, "model": facts.model,
              "macs_before": facts.costs.macs_before, "macs_after": facts.costs.macs_after,
              "params_before": facts.costs.params_before, "params_after": facts.costs.params_after,
              "calibration": facts.calibration, "budget": _budget(facts), "route": _route(facts.outcome),
              "parity": facts.parity, "latency": _latency(facts.latency), "files": facts.files}
    clash = set(common) & set(facts.sections)
    if clash:  # a command's own key must not silently replace a common one
        raise ValueError(f"report.json: {facts.command} writes common keys as its own: {', '.join(sorted(clash))}")
    return {**common, **facts.sections}


def write(staging: Path, facts: ReportFacts) -> dict:
    """report.json in `staging`, plain JSON (statistics made safe by json_safe, no NaN); the report as written."""
    report = json_safe(report_json(facts))
    (staging / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def _budget(facts: ReportFacts) -> dict | None:
    """The budget search: the route's own report and where it was measured (BudgetOutcome.budget_entry), or
    a recipe's budget pass's statistics; null without a budget."""
    return facts.outcome.budget_entry() if facts.outcome else facts.budget


def _route(outcome: BudgetOutcome | None) -> dict | None:
    """{"taken": width | depth | width+depth, and each refusal on the way}; null without a budget."""
    return outcome.route_entry() if outcome else None


def _latency(latency: Latency | LatencySkipped | None) -> dict | None:
    if latency is None:
        return None
    if isinstance(latency, LatencySkipped):
        return {"skipped": latency.reason}
    return {"backend": latency.backend, "threads": latency.threads, "runs": latency.runs,
            "dense_ms": latency.dense_ms, "compressed_ms": latency.compressed_ms, "speedup": latency.speedup,
            **latency.extra}


def output_files(output: Path, *names: str) -> dict[str, str]:
    """report.json's `files`: each file named as it is in the output folder (staging moves it there)."""
    return {name: str(output / name) for name in names}
