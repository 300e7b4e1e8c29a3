"""What trtexec prints, read: its performance summary (latency per metric, throughput), the TensorRT version
it names, and the per-layer profile it exports with --exportProfile. Pure functions of the text, so that
they are tested on recorded output where no GPU is at hand."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from prunefx.runtime.errors import DeviceToolError
from prunefx.runtime.measure.latency import LatencyStats

SUMMARY_METRICS = ("Latency", "End-to-End Host Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time",
                   "D2H Latency")
_METRIC_LINE = re.compile(r"\]\s*(?P<metric>[A-Za-z0-9 \-]+?):\s*(?P<values>min = .*)$")
_VALUE = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([0-9.eE+-]+)\s*ms")
_THROUGHPUT = re.compile(r"Throughput:\s*([0-9.eE+-]+)\s*qps")
_VERSION = re.compile(r"\[TensorRT v(\d+)\]")
# trtexec times at least --iterations queries and for at least --duration: how many it timed, it says here
_TIMED = re.compile(r"Timing trace has (\d+) queries")
# When trtexec does not say its version: JetPack 6's TensorRT, whose strongly typed build TensorRT 11 shares.

@dataclass(frozen=True)
class TrtexecSummary:
    """Per metric ('Latency', 'GPU Compute Time', ...): {'min', 'max', 'mean', 'median', 'p90', 'p95', 'p99'}
    in ms (the percentiles trtexec printed); throughput in queries per second."""

    metrics: dict[str, dict[str, float]]
    throughput_qps: float | None
    tensorrt_version: str | None
    timed_queries: int | None = None

    def latency(self, metric: str = "GPU Compute Time") -> LatencyStats:
        values = self.metrics.get(metric)
        if values is None or "median" not in values:
            raise DeviceToolError(f"trtexec printed no '{metric}' line (printed: {', '.join(self.metrics) or 'none'})")
        return LatencyStats(median_ms=values["median"], p90_ms=values.get("p90", float("nan")),
                            p99_ms=values.get("p99", float("nan")), mean_ms=values["mean"], min_ms=values["min"],
                            runs=self.timed_queries or 0, threads=None)


def _values(text: str) -> dict[str, float]:
    values = {}
    for name, percent, number in _VALUE.findall(text):
        values[f"p{float(percent):g}" if percent else name] = float(number)
    return values


def parse_performance_summary(output: str) -> TrtexecSummary:
    """Read trtexec's performance summary from its output (stdout and stderr together)."""
    start = output.rfind("=== Performance summary ===")
    if start < 0:
        raise DeviceToolError("trtexec printed no '=== Performance summary ===' (did the build or the run fail? "
                              "its last lines: " + " | ".join(output.strip().splitlines()[-3:]) + ")")
    metrics, throughput = {}, None
    for line in output[start:].splitlines()[1:]:
        if "===" in line:
            break  # the next section (e.g. "=== Explanations ...")
        found = _THROUGHPUT.search(line)
        if found:
            throughput = float(found.group(1))
        found = _METRIC_LINE.search(line)
        if found and found.group("metric").strip() in SUMMARY_METRICS:
            metrics[found.group("metric").strip()] = _values(found.group("values"))
    version, timed = _VERSION.search(output), _TIMED.findall(output[:start])
    return TrtexecSummary(metrics=metrics, throughput_qps=throughput, tensorrt_version=_version_text(version),
                          timed_queries=int(timed[-1]) if timed else None)


def _version_text(found: re.Match | None) -> str | None:
    """'[TensorRT v100900]' -> '10.9.0' (major*10000 + minor*100 + patch since 10), '[TensorRT v8601]' -> '8.6.1'
    (major*1000 + minor*100 + patch before)."""
    if found is None:
        return None
    value = int(found.group(1))
    major = value // 10000 if value >= 100000 else value // 1000
    minor = (value // 100) % (100 if value >= 100000 else 10)
    return f"{major}.{minor}.{value % 100}"


def parse_trtexec_profile(text: str) -> tuple[dict[str, float], int]:
    """(layer name -> median ms, number of profiled runs) from trtexec's --exportProfile JSON
    ([{"count": N}, {"name", "timeMs", "averageMs", "medianMs", "percentage"}, ...]; no medianMs before 8.6)."""
    records = json.loads(text)
    runs = next((int(record["count"]) for record in records if "count" in record), 0)
    times = {record["name"]: float(record.get("medianMs", record.get("averageMs", 0.0)))
             for record in records if "name" in record}
    return times, runs


def tensorrt_version_in(output: str) -> str | None:
    """The TensorRT version trtexec names in its output ('[TensorRT v100900]' -> '10.9.0'), or None."""
    return _version_text(_VERSION.search(output))
