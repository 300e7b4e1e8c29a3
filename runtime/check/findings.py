"""One finding of `prunefx check` (runtime/check/readiness.py) and the severities it can have: apart from the
checker, so that the rules (runtime/check/rules.py) and the checker that runs them both read it downward."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    severity: str   # error | warning | info
    rule: str
    node: str       # the node's (or graph input's) name
    op: str
    message: str

    def line(self) -> str:
        return f"{self.severity:<7} {self.rule:<25} {self.node or '-'} ({self.op}): {self.message}"
