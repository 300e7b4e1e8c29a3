"""The pass protocol.

A pass is a plain function `(program, /, *, config) -> Result`, one per file, the file named after
the function. It returns a new or rewritten Program, whether it really changed anything
(`modified` is computed, never assumed) and statistics describing what it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from prunefx.graph import Program


@dataclass
class Result:
    program: Program
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


class Pass(Protocol):
    __name__: str

    def __call__(self, program: Program, /, *, config: dict | None = None) -> Result: ...
