"""Pipeline: an explicit, ordered tuple of passes, verified after every step; itself a pass.

Before any pass runs, every step's config is parsed by its pass's config class. After each pass the
Pipeline enforces the pass's contract (passes/core/contract.py): the Program it returns is the one it was
given when it declares `in_place`, a new one otherwise; Analysis fields outside its `writes` are as they
were; the Program verifies (graph lint, shape propagation, output shapes, re-export); and, for a pass
that promises exactness, the outputs on the example inputs are those before the pass. A failure names
the failing pass and the passes that ran before it, so a user can bisect a recipe without tracebacks.

A composite pass (choose_for_budget, quantize_int8 folding batch norms first, depth_to_budget) runs
each inner pass through `run_inner`: a one-step Pipeline at the verification level of the Pipeline
that is running the composite (contract, graph lint, shapes, exactness; the re-export is left to the
composite's result), so the guarantees hold inside too, and a failure there is reported as
`outer > inner`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from tqdm.auto import tqdm

from prunefx.graph import Program, verify
from prunefx.graph.errors import PrunefxError
from prunefx.graph.full_float32 import full_float32
from prunefx.graph.program import require_program
from prunefx.graph.progress import bar_or_lines
from prunefx.graph.verify import verified_outputs
from prunefx.passes.core.contract import Contract, analysis_snapshot, as_pass, changed_fields
from prunefx.passes.core.pass_config import PassConfig
from prunefx.passes.core.result import Facts, Pass, Result

log = logging.getLogger(__name__)
VERIFY_LEVELS = ("full", "shapes", "none")
EXACTNESS_TOLERANCE = 1e-4  # relative to the largest output magnitude, for float32 outputs and wider
# In float16 or bfloat16 a rewrite that is exact in arithmetic still rounds differently: a batch-norm fold moved a
# bfloat16 ResNet-18 by 6e-3 of its outputs, no further from the float64 result than before. Their checks allow
# this many of the outputs' epsilon.
HALF_ROUNDINGS = 8


class PipelineError(PrunefxError):
    def __init__(self, message: str, *, failed: str, ran_before: list[str]):
        super().__init__(message)
        self.failed = failed
        self.ran_before = ran_before


# The verification level of the Pipeline whose step is running now: inner passes run at the same level.
_ENCLOSING_LEVEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("prunefx_verify", default=None)
BARE_INNER_LEVEL = "full"  # a composite called outside any Pipeline verifies its inner passes fully


@dataclass(frozen=True)
class Step:
    function: Pass
    config: dict[str, Any] | PassConfig = field(default_factory=dict)  # a mapping, or the pass's parsed config

    def __post_init__(self) -> None:
        if callable(self.function):  # a user's plain function gets an empty contract
            object.__setattr__(self, "function", as_pass(self.function))

    @property
    def name(self) -> str:
        return self.function.__name__


@dataclass
class PipelineResult:
    program: Program
    steps: list[tuple[str, Result]]

    @property
    def modified(self) -> bool:
        return any(result.modified for _, result in self.steps)

    def stats(self) -> dict[str, dict]:
        """Statistics by pass name; a pass that ran more than once (prune -> distill -> prune) keeps
        every run: the first under its name, the later ones as `name#2`, `name#3`, ..."""
        stats: dict[str, dict] = {}
        for name, result in self.steps:
            key, run = name, 1
            while key in stats:
                run += 1
                key = f"{name}#{run}"
            stats[key] = result.stats
        return stats

    def facts(self, name: str, kind: type[Facts]) -> Facts:
        """The typed facts of the first step named `name` (see result.py), for a caller that reads what a
        pass found without reading its report by key."""
        found = next((result for step, result in self.steps if step == name), None)
        if found is None:
            raise KeyError(f"no step named {name!r} ran (ran: {', '.join(step for step, _ in self.steps)})")
        return found.facts_as(kind)


def _outputs(program: Program) -> list[torch.Tensor]:
    with full_float32():  # TF32 (cuDNN's default on a GPU) would move them by 1e-3: as inexact as a wrong rewrite
        return [t for t in pytree.tree_leaves(program.run_example()) if isinstance(t, torch.Tensor)]


def exactness_tolerance(outputs: list[torch.Tensor], program: Program) -> float:
    """How far an exact rewrite of `program` may move outputs like these (relative): EXACTNESS_TOLERANCE, or
    HALF_ROUNDINGS of the epsilon of the least precise floating weight or output where that is larger (a half
    precision Program whose last step casts to float32 still rounds in half before it)."""
    tensors = [*outputs, *program.module.parameters(), *program.module.buffers()]
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    return max([EXACTNESS_TOLERANCE, *(HALF_ROUNDINGS * torch.finfo(dtype).eps for dtype in dtypes)])


def _largest_relative_error(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    scale = max(float(t.abs().max()) for t in before) or 1.0
    return max(float((a - b).abs().max()) for a, b in zip(before, after)) / scale


def _check_in_place(contract: Contract, given: Program, result: Result) -> None:
    """The Pipeline cloned the caller's Program once, so a pass may rewrite the Program it is given
    (`in_place=True`: it returns that same Program) or leave it alone and return a new one; a pass
    that breaks its declaration is a bug, caught here. An undeclared pass (None) is not checked."""
    if contract.in_place is True and result.program is not given:
        raise PrunefxError("declares in_place = True but returned a different Program than it was given")
    if contract.in_place is False and result.program is given:
        raise PrunefxError("declares in_place = False but returned the Program it was given")


def _check_writes(contract: Contract, result: Result, before: dict[str, Any]) -> None:
    """A declared pass changes only the analysis fields it declares. An undeclared one (a user's plain function,
    which may call declared passes: remove_channels records the channels it kept) is not checked."""
    if contract.in_place is None:
        return
    undeclared = [name for name in changed_fields(before, result.program) if name not in contract.writes]
    if undeclared:
        raise PrunefxError(f"changed the analysis record '{undeclared[0]}', which it does not declare in `writes`")


class Pipeline:
    """Runs its steps in order on a copy of a Program. A Pipeline is a pass too: `pipeline(program)`
    returns a Result, and a Pipeline can be a step of another (its contract is its steps' together)."""

    def __init__(self, steps, *, verify: str = "full", progress: bool = False, name: str = "pipeline",
                 inner: bool = False):
        if verify not in VERIFY_LEVELS:
            raise PrunefxError(f"verify must be one of {VERIFY_LEVELS}, not '{verify}'")
        if callable(steps) or isinstance(steps, (str, bytes)):  # Pipeline(fold_batchnorm): one pass, not a list
            raise PrunefxError(f"Pipeline takes a list of steps (passes, or (pass, config) pairs), not "
                               f"{getattr(steps, '__name__', type(steps).__name__)} alone: Pipeline([...])")
        # A step is a Step, a pass, or a (pass, config) pair.
        self.steps = tuple(_as_step(step, index) for index, step in enumerate(steps))
        self._configs: list[Any] = []  # each step's parsed config, in order (None: its mapping, no config class)
        self._check_configs()
        self.verify = verify
        self.progress = progress
        self.__name__ = name
        # inner: run by a composite pass (run_inner). A pass's own refusal (a PrunefxError such as "cannot
        # reach the budget") then reaches the composite unchanged, for it to decide what it means.
        self.inner = inner

    @property
    def contract(self) -> Contract:
        contracts = [step.function.contract for step in self.steps]
        # a step without a declaration (a user's function) may write what the passes it calls write: nor has this
        undeclared = any(c.in_place is None for c in contracts)
        return Contract(None, in_place=None if undeclared else False, exact=bool(contracts) and all(c.exact for c in contracts),
                        reads=tuple(dict.fromkeys(name for c in contracts for name in c.reads)),
                        writes=tuple(dict.fromkeys(name for c in contracts for name in c.writes)))

    def __call__(self, program: Program, /, *, config: Any = None) -> Result:
        if config:
            raise PrunefxError(f"{self.__name__}: a Pipeline takes no config (each step carries its own)")
        result = self.run(program)
        return Result(result.program, modified=result.modified, stats=result.stats())

    def _check_configs(self) -> None:
        """Every step's config, before any pass runs: a bad key in the last step of a long recipe fails
        now, not after the training of the steps before it."""
        for index, step in enumerate(self.steps):
            if not callable(step.function):
                raise PrunefxError(f"step {index + 1}: {step.function!r} is not a pass function")
            config_class = step.function.contract.config
            parsed_already = config_class is not None and isinstance(step.config, config_class)
            if not (isinstance(step.config, dict) or parsed_already):
                raise PrunefxError(f"step {index + 1} ('{step.name}'): its config must be a mapping or its parsed "
                                   f"config, not {type(step.config).__name__}")
            try:
                parsed = step.function.contract.parse(step.config if parsed_already else dict(step.config))
            except PrunefxError as error:
                raise PipelineError(f"step {index + 1} ('{step.name}'): {error} (no pass has run)",
                                    failed=step.name, ran_before=[]) from error
            self._configs.append(parsed)

    @property
    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    def run(self, program: Program, *, after_step: Callable[[str, Result], None] | None = None,
            on_copy: bool = True) -> PipelineResult:
        """Run every pass on a copy of `program` (the caller's Program is left untouched): the Pipeline
        clones once, and each pass may then rewrite the Program it is given (see _check_in_place).
        `on_copy=False`: the caller hands `program` over and the passes rewrite it (run_inner, whose composite
        owns it; a command that reads only the dense Program's name afterwards): no second copy of the weights.
        `after_step(name, result)` is called after each verified pass (compress measures every stage with
        it); it must not change the Program, which the next pass receives."""
        require_program(program, "Pipeline.run")
        if on_copy:
            program = program.clone()
        done: list[tuple[str, Result]] = []
        outputs = None  # the outputs of `program` where the last check ran it: the next exact pass's reference
        for step, parsed in zip(bar_or_lines(self.progress, make=tqdm, iterable=self.steps, desc="passes", unit="pass"),
                                self._configs):
            if not self._checks_exactness(step, program):  # a training step's GPU memory is not for a stale reference
                outputs = None
            result, outputs = self._run_step(step, parsed, program, [name for name, _ in done], outputs)
            log.log(logging.DEBUG if self.inner else logging.INFO, "pass %s: modified=%s", step.name, result.modified)
            done.append((step.name, result))
            if after_step is not None:
                after_step(step.name, result)
            program = result.program
        return PipelineResult(program, done)

    def _run_step(self, step: Step, parsed: Any, program: Program, ran_before: list[str],
                  outputs: list[torch.Tensor] | None) -> tuple[Result, list[torch.Tensor] | None]:
        """One pass on `program`, handed its `parsed` config (its mapping where the pass has no config class);
        `outputs`: `program`'s outputs on its example inputs if known. Returns the result and its Program's
        outputs where the check ran it."""
        contract = step.function.contract
        reference = (_outputs(program) if outputs is None else outputs) if self._checks_exactness(step, program) else None
        del outputs
        analysis = analysis_snapshot(program)
        level = _ENCLOSING_LEVEL.set(self.verify)
        try:
            result = step.function(program, config=dict(step.config) if parsed is None else parsed)
        except PipelineError as inner:  # an inner pass of this composite failed: name both
            raise self._failure(step, inner, ran_before, failed=f"{step.name} > {inner.failed}") from inner
        except Exception as error:
            if self.inner and isinstance(error, PrunefxError):
                raise
            raise self._failure(step, error, ran_before) from error
        finally:
            _ENCLOSING_LEVEL.reset(level)
        try:
            _check_in_place(contract, program, result)
            _check_writes(contract, result, analysis)
            return result, self._check(result, reference)
        except Exception as error:
            raise self._failure(step, error, ran_before) from error

    def _checks_exactness(self, step: Step, program: Program) -> bool:
        return self.verify == "full" and step.function.contract.exact and not program.training

    def _failure(self, step: Step, error: BaseException, ran_before: list[str], *,
                 failed: str | None = None) -> PipelineError:
        where = "" if self.inner else f" (passes that ran before it: {', '.join(ran_before) or 'none'})"
        return PipelineError(f"pass '{step.name}' failed: {error}{where}", failed=failed or step.name,
                             ran_before=ran_before)

    def _check(self, result: Result, reference: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """Verify the result (and its exactness against `reference`); its Program's outputs where it ran them."""
        if self.verify == "none":
            return None
        # inner steps skip the re-export, the costliest check: a composite may try dozens of candidates,
        # and the Pipeline running it re-exports the one it returns
        with full_float32():  # the outputs the exactness check reads, as _outputs computes the reference
            outputs = verified_outputs(result.program, reexport=self.verify == "full" and not self.inner)
        if reference is not None and result.modified:
            outputs = _outputs(result.program) if outputs is None else outputs
            error, tolerance = _largest_relative_error(reference, outputs), exactness_tolerance(reference, result.program)
            if error > tolerance:
                raise PrunefxError(f"promised an exact rewrite but outputs moved by {error:.2e} (relative; "
                                   f"rounding allows {tolerance:.0e})")
        return outputs


def run_inner(function: Pass, program: Program, config: dict[str, Any] | PassConfig | None = None, *,
              on_copy: bool = False) -> Result:
    """Run `function`, an inner pass of a composite pass, as a verified one-step Pipeline, at the level of
    the Pipeline running the composite (BARE_INNER_LEVEL when there is none). `on_copy=False` (default):
    the composite owns `program` and an in-place inner pass rewrites it; `on_copy=True`: `program` stays as
    it is (the composite cuts several candidates from it). A contract or verification failure is a
    PipelineError naming the inner pass; the pass's own PrunefxError reaches the composite unchanged."""
    level = _ENCLOSING_LEVEL.get() or BARE_INNER_LEVEL
    parsed = isinstance(config, PassConfig)  # a typed config goes as it is: parsed once, by its caller
    pipeline = Pipeline([(function, config if parsed else dict(config or {}))], verify=level, inner=True)
    return pipeline.run(program, on_copy=on_copy).steps[0][1]


def verify_inner(name: str, result: Result) -> Result:
    """What run_inner checks of an inner pass's Result, for a composite that ran the pass's search itself (a
    budget search that asks for its measurements): the Program verified at the enclosing level, without the
    re-export; a failure is a PipelineError naming the pass."""
    if (_ENCLOSING_LEVEL.get() or BARE_INNER_LEVEL) != "none":
        try:
            verify(result.program, reexport=False)
        except Exception as error:
            raise PipelineError(f"pass '{name}' failed: {error}", failed=name, ran_before=[]) from error
    return result


def _as_step(step, index: int) -> Step:
    if isinstance(step, Step):
        return step
    if isinstance(step, tuple):
        if len(step) != 2:
            raise PrunefxError(f"step {index + 1}: a (pass, config) pair has 2 items, this one {len(step)}")
        return Step(*step)
    return Step(step)
