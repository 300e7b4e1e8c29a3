"""What a pass returns, and what a pass is.

A pass is declared with `@graph_pass(...)` (passes/core/contract.py): a function
`(program, /, *, config) -> Result` with its contract (config class, in-place behaviour, exactness,
Analysis fields read and written). It returns a new or rewritten Program, whether it really changed
anything (`modified` is computed, never assumed) and statistics describing what it did: `stats` is the
report (JSON, for people and report.json), `facts` the typed record a composite pass reads from an inner
one (each pass that hands facts on declares their class beside it, e.g. fold_batchnorm.Folded), so no
pass reads another pass's report by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prunefx.graph import Program

if TYPE_CHECKING:
    from prunefx.passes.core.contract import Contract


Facts = TypeVar("Facts")


@dataclass
class Result:
    program: Program
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    facts: object = None  # what a composite pass reads from this result, typed (see the module docstring)

    def facts_as(self, kind: type[Facts]) -> Facts:
        """This result's facts, which must be a `kind`: the typed channel from an inner pass to its caller."""
        if not isinstance(self.facts, kind):
            raise TypeError(f"expected {kind.__name__} facts from the pass, not {type(self.facts).__name__}")
        return self.facts


class Pass(Protocol):
    """A declared pass (contract.DeclaredPass) or a Pipeline: callable, named, with a contract."""

    __name__: str

    @property
    def contract(self) -> Contract: ...

    def __call__(self, program: Program, /, *, config: Any = None) -> Result: ...
