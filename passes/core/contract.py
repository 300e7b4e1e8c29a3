"""The pass contract: what a pass promises, declared where it is defined and enforced by the Pipeline.

    @graph_pass(config=FoldBatchnormConfig, in_place=True, exact=True)
    def fold_batchnorm(program, /, *, config=None) -> Result: ...

`config` (parsed before the first pass runs), `in_place`, `exact` (checked with `verify="full"`) and
`reads` / `writes` (the Analysis fields; any other field must come out as it went in). A user's plain
function still runs in a Pipeline: `as_pass` gives it an empty contract. What each promise means and how
it is checked: see docs/passes-and-registry.md, 'The contract'.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prunefx.graph import Program
from prunefx.graph.analysis_record import Analysis
from prunefx.graph.program import require_program
from prunefx.passes.core.pass_config import PassConfig
from prunefx.passes.core.result import Result

ANALYSIS_FIELDS = tuple(f.name for f in dataclasses.fields(Analysis))
PassFunction = Callable[..., Result]


@dataclass(frozen=True)
class Contract:
    config: type[PassConfig] | None = None
    in_place: bool | None = None  # None: not declared, not checked (a user's plain function)
    exact: bool = False
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in (*self.reads, *self.writes) if name not in ANALYSIS_FIELDS]
        if unknown:  # a typo here would make the postcondition check a different field than meant
            raise ValueError(f"'{unknown[0]}' is not a field of the Analysis record ({', '.join(ANALYSIS_FIELDS)})")

    def parse(self, config: dict[str, Any] | PassConfig) -> PassConfig | None:
        """The config class's reading of `config` (a ConfigError when it is wrong); None without a class."""
        return self.config.parse(config) if self.config is not None else None


class DeclaredPass:
    """A pass function with its contract. Calling it calls the function: the contract is checked by
    the Pipeline that runs it, so a bare call costs nothing extra."""

    __name__: str  # set by functools.update_wrapper: the function's name, the pass's name

    def __init__(self, function: PassFunction, contract: Contract):
        functools.update_wrapper(self, function)
        self.function = function
        self.contract = contract

    @property
    def name(self) -> str:
        return self.__name__

    @property
    def config_class(self) -> type[PassConfig] | None:
        return self.contract.config

    def __call__(self, program: Program, /, *, config: Any = None) -> Result:
        require_program(program, self.name)  # a module or a path: one line, not an AttributeError deep inside
        return self.function(program, config=config)

    def __repr__(self) -> str:
        return f"<pass {self.__name__}>"


def graph_pass(*, config: type[PassConfig] | None, in_place: bool, exact: bool = False,
               reads: tuple[str, ...] = (), writes: tuple[str, ...] = ()) -> Callable[[PassFunction], DeclaredPass]:
    """Declare a pass function's contract (see the module docstring)."""
    if not isinstance(in_place, bool) or not isinstance(exact, bool):
        raise TypeError(f"graph_pass: in_place and exact are True or False, not {in_place!r} and {exact!r}")
    if isinstance(reads, str) or isinstance(writes, str):  # tuple("graph") would read it letter by letter
        raise TypeError("graph_pass: reads and writes are tuples of Analysis field names, not a text")
    contract = Contract(config, in_place, exact, tuple(reads), tuple(writes))

    def declare(function: PassFunction) -> DeclaredPass:
        if config is not None and not (isinstance(config, type) and issubclass(config, PassConfig)):
            raise TypeError(f"{function.__name__}: config must be a PassConfig subclass (or None), not {config!r}")
        if config is not None and config.owner != function.__name__:  # every config message names the pass
            raise ValueError(f"{function.__name__}: its config class says owner = '{config.owner}'")
        return DeclaredPass(function, contract)
    return declare


def as_pass(function: Any) -> Any:
    """A declared pass (or a Pipeline) as it is; a plain callable with an empty contract."""
    if hasattr(function, "contract"):
        return function
    if not callable(function):
        raise TypeError(f"{function!r} is not a pass function")
    return DeclaredPass(function, Contract())


def analysis_snapshot(program: Program) -> dict[str, Any]:
    """Each Analysis field as plain data, to compare after a pass (the postcondition on `writes`)."""
    return {name: _plain(getattr(program.analysis, name)) for name in ANALYSIS_FIELDS}


def changed_fields(before: dict[str, Any], program: Program) -> list[str]:
    """The Analysis fields whose value differs from the snapshot `before`."""
    after = analysis_snapshot(program)
    return [name for name in ANALYSIS_FIELDS if not _same(before[name], after[name])]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return copy.deepcopy(value)  # an in-place pass mutates the very dict it was given


def _same(before: Any, after: Any) -> bool:
    try:
        return bool(before == after)
    except RuntimeError:  # tensors inside a record: equality is elementwise, so compare their reprs instead
        return repr(before) == repr(after)
