"""What a pass returns, and what a pass is.

A pass is declared with `@graph_pass(...)` (passes/contract.py): a function
`(program, /, *, config) -> Result` with its contract (config class, in-place behaviour, exactness,
Analysis fields read and written). It returns a new or rewritten Program, whether it really changed
anything (`modified` is computed, never assumed) and statistics describing what it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prunefx.graph import Program

if TYPE_CHECKING:
    from prunefx.passes.contract import Contract


@dataclass
class Result:
    program: Program
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


class Pass(Protocol):
    """A declared pass (contract.DeclaredPass) or a Pipeline: callable, named, with a contract."""

    __name__: str

    @property
    def contract(self) -> Contract: ...

    def __call__(self, program: Program, /, *, config: Any = None) -> Result: ...
