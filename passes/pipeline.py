"""Pipeline: an explicit, ordered tuple of passes, verified after every step.

After each pass the Program is verified (graph lint, shape propagation, output shapes, re-export)
and, for passes that promise exactness (`pass.exact = True`), the outputs on the example inputs are
compared with those before the pass. A failure names the failing pass and the passes that ran
before it, so a user can bisect a recipe without reading tracebacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from tqdm.auto import tqdm

from prunefx.graph import Program, verify
from prunefx.graph.errors import PrunefxError
from prunefx.passes.result import Pass, Result

VERIFY_LEVELS = ("full", "shapes", "none")
EXACTNESS_TOLERANCE = 1e-4  # relative to the largest output magnitude


class PipelineError(PrunefxError):
    def __init__(self, message: str, *, failed: str, ran_before: list[str]):
        super().__init__(message)
        self.failed = failed
        self.ran_before = ran_before


@dataclass(frozen=True)
class Step:
    function: Pass
    config: dict[str, Any] = field(default_factory=dict)

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


def _outputs(program: Program) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(program.run_example()) if isinstance(t, torch.Tensor)]


def _largest_relative_error(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    scale = max(float(t.abs().max()) for t in before) or 1.0
    return max(float((a - b).abs().max()) for a, b in zip(before, after)) / scale


def _check_in_place(step: Step, given: Program, result: Result) -> None:
    """A pass declares whether it rewrites the Program it is given (`in_place = True`: it returns that
    same Program) or leaves it alone and returns a new one (`in_place = False`). The Pipeline cloned the
    caller's Program once, so either is safe; a pass that breaks its declaration is a bug, caught here.
    A pass without a declaration (a user's function) is not checked."""
    declared = getattr(step.function, "in_place", None)
    if declared is True and result.program is not given:
        raise PrunefxError("declares in_place = True but returned a different Program than it was given")
    if declared is False and result.program is given:
        raise PrunefxError("declares in_place = False but returned the Program it was given")


class Pipeline:
    def __init__(self, steps, *, verify: str = "full", progress: bool = False):
        if verify not in VERIFY_LEVELS:
            raise PrunefxError(f"verify must be one of {VERIFY_LEVELS}, not '{verify}'")
        # A step is a Step, a pass function, or a (pass function, config) pair.
        self.steps = tuple(step if isinstance(step, Step) else Step(*step) if isinstance(step, tuple) else Step(step)
                           for step in steps)
        self._check_configs()
        self.verify = verify
        self.progress = progress

    def _check_configs(self) -> None:
        """Every step's config, before any pass runs: a bad key in the last step of a long recipe fails
        now, not after the training of the steps before it (each pass's `check_config`)."""
        for index, step in enumerate(self.steps):
            if not callable(step.function):
                raise PrunefxError(f"step {index + 1}: {step.function!r} is not a pass function")
            if not isinstance(step.config, dict):
                raise PrunefxError(f"step {index + 1} ('{step.name}'): its config must be a mapping, "
                                   f"not {type(step.config).__name__}")
            config_class = getattr(step.function, "config_class", None)
            check = config_class.parse if config_class is not None else getattr(step.function, "check_config", None)
            if check is not None:
                try:
                    check(dict(step.config))
                except PrunefxError as error:
                    raise PipelineError(f"step {index + 1} ('{step.name}'): {error} (no pass has run)",
                                        failed=step.name, ran_before=[]) from error

    @property
    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    def run(self, program: Program, *, after_step: Callable[[str, Result], None] | None = None) -> PipelineResult:
        """Run every pass on a copy of `program` (the caller's Program is left untouched): the Pipeline
        clones once, and each pass may then rewrite the Program it is given (see _check_in_place).
        `after_step(name, result)` is called after each verified pass (compress measures every stage with
        it); it must not change the Program, which the next pass receives."""
        program = program.clone()
        done: list[tuple[str, Result]] = []
        for step in tqdm(self.steps, desc="passes", disable=not self.progress):
            result = self._run_step(step, program, [name for name, _ in done])
            done.append((step.name, result))
            if after_step is not None:
                after_step(step.name, result)
            program = result.program
        return PipelineResult(program, done)

    def _run_step(self, step: Step, program: Program, ran_before: list[str]) -> Result:
        check_exact = self.verify == "full" and getattr(step.function, "exact", False) and not program.training
        reference = _outputs(program) if check_exact else None
        try:
            result = step.function(program, config=dict(step.config))
            _check_in_place(step, program, result)
            self._check(step, result, reference)
        except PipelineError:
            raise
        except Exception as error:
            before = ", ".join(ran_before) or "none"
            raise PipelineError(f"pass '{step.name}' failed: {error} (passes that ran before it: {before})",
                                failed=step.name, ran_before=ran_before) from error
        return result

    def _check(self, step: Step, result: Result, reference: list[torch.Tensor] | None) -> None:
        if self.verify == "none":
            return
        verify(result.program, reexport=self.verify == "full")
        if reference is not None and result.modified:
            error = _largest_relative_error(reference, _outputs(result.program))
            if error > EXACTNESS_TOLERANCE:
                raise PrunefxError(f"promised an exact rewrite but outputs moved by {error:.2e} (relative)")
