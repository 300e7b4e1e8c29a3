"""The configuration of sparsify_nm (passes/sparsify_nm.py, which documents every option): the options,
their normalised values (the pattern parsed, the damping defaulted per criterion, name lists as sets)
and the calibration batches each criterion needs, or one SparsityError line naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from prunefx.graph import Program
from prunefx.graph.activations import calibration_inputs
from prunefx.graph.errors import PrunefxError
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.graph.model_state import random_state_kept
from prunefx.graph.sparsity.nm_masks import Pattern
from prunefx.passes.core import config_checks as checks
from prunefx.passes.core.pass_config import PassConfig, option

CRITERIA = ("magnitude", "obs", "cap")
UNSTRUCTURED = "unstructured"
_DEFAULT_DAMPING = {"magnitude": 0.0, "obs": 0.01, "cap": 1e-3}


class SparsityError(PrunefxError):
    """Bad sparsify_nm configuration or calibration data."""


NAMES = "a list of node or weight names"


@dataclass
class SparsifyNMConfig(PassConfig):
    owner: ClassVar[str] = "sparsify_nm"

    pattern: str = option("2:4", help="N:M (keep N of every M input channels) or unstructured")
    criterion: str = option("magnitude", help="how weights are chosen (obs and cap update the others)",
                            choices=CRITERIA)
    sparsity: float | None = option(help="fraction of the eligible weights to zero (unstructured only)")
    calibration: Any = option(source="labelled_calibration", help="obs: input batches; cap: (inputs, labels)")
    damping: float | None = option(help="ridge term, a fraction of the mean Hessian/Fisher diagonal "
                                        "(default 0.01 for obs, 1e-3 for cap)")
    block_size: int = option(64, help="CAP's block of consecutive weights (a multiple of M)")
    sequential: bool = option(True, help="obs: gather each layer's Hessian on the already sparse network")
    min_channels: int = option(16, help="layers with fewer input or output channels stay dense")
    keep: list[str] = option([], help="node or weight names left dense", describe=NAMES)
    layers: list[str] | None = option(help="only these node or weight names", describe=NAMES)
    progress: bool | None = option(help="a progress bar of obs and cap (default: on a terminal)", cli=False)

    def check(self) -> None:
        resolved(self)

    def reads(self, key: str) -> bool:
        return self.criterion != "magnitude"


@dataclass(frozen=True)
class SparsityPlan:
    """The options resolved: the pattern parsed (None: unstructured), the damping defaulted per criterion,
    name lists as sets, and the calibration batches as the criterion reads them."""

    pattern: Pattern | None
    criterion: str
    sparsity: float | None
    damping: float
    block_size: int
    sequential: bool
    min_channels: int
    keep: frozenset[str]
    layers: frozenset[str] | None
    calibration: list | None = None
    progress: bool | None = None


def checked_config(program: Program, config: SparsifyNMConfig | dict | None) -> SparsityPlan:
    """The plan for `config` (parsed here where it is a mapping), with the calibration batches it reads."""
    settings = SparsifyNMConfig.parse(config)
    if has_fake_quant(program.graph):  # its weights are read through their INT8 scales, calibrated dense
        raise SparsityError(f"sparsify_nm: model '{program.name}' is already quantized; sparsify first, then "
                            "quantize_int8, so that the INT8 scales are calibrated on the sparse weights")
    plan = resolved(settings)
    for key in ("keep", "layers"):  # a name that matches nothing would keep (or sparsify) nothing, silently
        checks.nodes_in("sparsify_nm", key, sorted(getattr(plan, key) or ()), program, weights=True)
    return replace(plan, calibration=_calibration(program, plan.criterion, settings.calibration))


def resolved(config: SparsifyNMConfig) -> SparsityPlan:
    """The values normalised (pattern parsed, damping defaulted per criterion), or a SparsityError."""
    criterion = config.criterion
    if criterion not in CRITERIA:
        raise SparsityError(f"sparsify_nm: criterion must be one of {', '.join(CRITERIA)}, not {criterion!r}")
    pattern = _pattern(config)
    damping = _number("damping", _DEFAULT_DAMPING[criterion] if config.damping is None else config.damping,
                      positive=criterion == "cap")
    size = config.block_size
    group = pattern.group if pattern else 1
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % group:
        raise SparsityError(f"sparsify_nm: block_size must be a positive multiple of {group}, not {size!r}")
    minimum = config.min_channels
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise SparsityError(f"sparsify_nm: min_channels must be a positive integer, not {minimum!r}")
    if not isinstance(config.sequential, bool):
        raise SparsityError(f"sparsify_nm: sequential must be true or false, not {config.sequential!r}")
    return SparsityPlan(pattern, criterion, config.sparsity, damping, size, config.sequential, minimum,
                        frozenset(_names("keep", config.keep)),
                        None if config.layers is None else frozenset(_names("layers", config.layers)),
                        progress=config.progress)


def _pattern(config: SparsifyNMConfig) -> Pattern | None:
    if config.pattern == UNSTRUCTURED:
        if config.criterion == "obs":
            raise SparsityError("sparsify_nm: unstructured sparsity is implemented for magnitude and cap, not obs")
        fraction = config.sparsity
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise SparsityError(f"sparsify_nm: unstructured needs 'sparsity' in [0, 1), not {fraction!r}")
        return None
    if config.sparsity is not None:
        raise SparsityError("sparsify_nm: 'sparsity' goes with pattern 'unstructured'; an N:M pattern fixes it")
    try:
        return Pattern.parse(config.pattern)
    except PrunefxError as error:
        raise SparsityError(f"sparsify_nm: {error} (or 'unstructured')") from None


def _number(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 if positive else value >= 0):
        raise SparsityError(f"sparsify_nm: {name} must be a number {'> 0' if positive else '>= 0'}, not {value!r}")
    return float(value)


def _names(option: str, value) -> set[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)) \
            or not all(isinstance(name, str) for name in value):
        raise SparsityError(f"sparsify_nm: {option} must be a list of node or weight names, not {value!r}")
    return set(value)


def _calibration(program: Program, criterion: str, batches):
    if criterion == "magnitude":
        return None
    if criterion == "obs":
        return [program.example_inputs] if batches is None else calibration_inputs(program.example_inputs, batches)
    if batches is None:
        raise SparsityError("sparsify_nm: criterion cap needs 'calibration' as (inputs, labels) batches "
                            "(its empirical Fisher comes from the gradients of the labelled loss)")
    with random_state_kept(program.example_inputs):  # a DataLoader's iter() draws from torch's generator
        batches = list(batches)
    inputs = calibration_inputs(program.example_inputs, batches)  # checks the shapes
    labels = [item[1] if isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[1], tuple)
              else None for item in batches]
    if any(label is None or not isinstance(label, torch.Tensor) or label.dtype != torch.int64 for label in labels):
        raise SparsityError("sparsify_nm: criterion cap needs every calibration batch as (inputs, int64 labels)")
    return list(zip(inputs, labels))
