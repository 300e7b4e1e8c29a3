"""Every pass's options are one dataclass, a subclass of `PassConfig`.

A pass takes `config` as a mapping (recipes, the Python API) or the parsed config, and names its config class
in its contract (`@graph_pass(config=...)`); `XConfig.parse(config)` hands a parsed config back unchanged.
The fields hold the defaults, `parse` refuses unknown keys and wrong types in one line, `check()` adds the
class's own rules, and fields with a `source` are inputs the caller injects (`needed_inputs()`,
prunefx/injection.py). The Pipeline parses every step before the first runs; the CLI derives its flags from
the same fields. See docs/passes-and-registry.md.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from prunefx.graph.errors import printable
from prunefx.passes.core import config_checks as checks
from prunefx.passes.core.config_checks import ConfigError

# What a caller can inject: compress and the CLI know how to make each of these.
SOURCES = {
    "calibration": "a few training input batches (inputs only)",
    "labelled_calibration": "a few training batches with their labels",
    "train": "the training batches (shuffled, augmented)",
    "val": "the validation batches (None without a validation split)",
    "teacher": "the dense program, frozen, in eval mode",
    "task": "the data's task: classification, segmentation or detection",
    "measure": "a function (before, after) -> speed-up measured on the target runtime",
    "latency": "a function (before, after) -> (before ms, after ms, spread) measured on the target runtime",
}


def option(default: Any = None, *, help: str, choices: tuple | None = None, source: str | None = None,
           cli: bool = True, describe: str | None = None, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> Any:
    """A config field: its default, one line of help (the CLI's too), the values it may take, and for an
    input the caller injects, where it comes from (a key of SOURCES; such fields get no CLI flag).
    `describe` names the accepted values in errors when the type alone says too little ("a fraction in (0, 1]").
    `low`/`high` bound a number (closed unless `low_open`/`high_open`): checked by `parse` and, through
    prunefx/cli/flags.py, by the CLI while it parses its flags."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown input source {source!r}")
    metadata = {"help": help, "choices": choices, "source": source, "cli": cli and source is None,
                "describe": describe, "bounds": None if low is None and high is None else
                (low, high, low_open, high_open)}
    if isinstance(default, (list, dict, set)):
        frozen = type(default)(default)
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _shown(value) -> str:
    return printable(repr(value))[:60]


def _type_name(kind) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
    if kind in names:
        return names[kind]
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if member is type(None) else _type_name(member) for member in typing.get_args(kind))
    if origin in (list, tuple, collections.abc.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping) or kind in (dict, Mapping):
        return "a mapping"
    if origin is collections.abc.Callable or kind is collections.abc.Callable:
        return "a function"
    return getattr(kind, "__name__", str(kind))


def _matches(value, kind) -> bool:
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # an int is a fine float; a bool, NaN or infinity is not
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, member) for member in args)
    if origin in (list, tuple, collections.abc.Sequence):  # a string is not a list of its letters
        item = args[0] if args else Any
        return isinstance(value, (list, tuple, set, frozenset)) and all(_matches(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping) or kind in (dict, Mapping):
        return isinstance(value, Mapping)
    if origin is collections.abc.Callable or kind is collections.abc.Callable:
        return callable(value)
    return isinstance(value, origin or kind)


# No count, width, multiple or step a pass takes comes near 2**31; a recipe's `round_to` of 400 digits
# would make every width computation a big-integer one (and bounds checks compare against it).
MAX_CONFIG_INTEGER = 1 << 31


def _check_integer_size(owner: str, name: str, value, depth: int = 0) -> None:
    """Every integer in `value`, in its lists and its mappings' values too (min_widths, a budget's width options)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth < 8:  # a recipe's options nest a few levels at most (YAML aliases are refused)
            for item in value:
                _check_integer_size(owner, name, item, depth + 1)
        return
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CONFIG_INTEGER:
        raise ConfigError(f"{owner}: '{name}' is an integer of {value.bit_length()} bits, over the limit of "
                          "2**31 (refused)")


def check_bounds(owner: str, field: dataclasses.Field, value) -> None:
    """A number outside the field's declared bounds is a ConfigError (None always passes)."""
    bounds = field.metadata.get("bounds")
    if bounds is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high, low_open, high_open = bounds
    try:
        if isinstance(value, int) and low is not None and high is None and not low_open:
            checks.integer(owner, field.name, value, minimum=int(low))
        else:
            checks.number(owner, field.name, value, low=low, high=high, low_open=low_open, high_open=high_open)
    except ConfigError:
        if not field.metadata.get("describe"):
            raise
        raise ConfigError(f"{owner}: '{field.name}' must be {field.metadata['describe']}, not {_shown(value)}") from None


@dataclasses.dataclass
class PassConfig:
    """Base of every pass's config. Subclasses are dataclasses with `option(...)` fields and set
    `owner` (the pass's name, used in every message)."""

    owner: ClassVar[str] = "pass"

    @classmethod
    def parse(cls, mapping: Mapping[str, Any] | None = None):
        """The config for `mapping` (defaults filled in), or a ConfigError naming the pass and the key; a config
        of this class as it is (the Pipeline parses once and hands the pass the parsed config)."""
        if isinstance(mapping, cls):
            return mapping
        if mapping is not None and not isinstance(mapping, Mapping):  # dict("macs=0.5") fails without naming it
            raise ConfigError(f"{cls.owner}: its config is a mapping of option names to values, such as "
                              f"{{'{dataclasses.fields(cls)[0].name}': ...}}, not {_shown(mapping)}")
        mapping = dict(mapping or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in mapping if key not in known)
        if unknown:
            raise ConfigError(f"{cls.owner}: unknown option '{printable(unknown[0])[:40]}' "
                              f"(known: {', '.join(sorted(known))})")
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.name not in mapping:
                continue
            value, kind = mapping[field.name], hints[field.name]
            if not _matches(value, kind):
                wanted = field.metadata.get("describe") or _type_name(kind)
                raise ConfigError(f"{cls.owner}: '{field.name}' must be {wanted}, not {_shown(value)}")
            choices = field.metadata.get("choices")
            if choices and isinstance(value, str) and value not in choices:
                raise ConfigError(f"{cls.owner}: '{field.name}' must be one of {', '.join(choices)}, "
                                  f"not {_shown(value)}")
            _check_integer_size(cls.owner, field.name, value)
            check_bounds(cls.owner, field, value)
        config = cls(**mapping)
        config.check()
        return config

    def check(self) -> None:
        """Ranges and rules between fields; subclasses raise ConfigError naming `owner` and the key."""

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field `name`, read from the class: no config is parsed (one may need a target)."""
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        return field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc,operator]

    def as_dict(self) -> dict[str, Any]:
        """Field -> value, shallow (injected batches and models are not copied)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def inputs(cls) -> dict[str, str]:
        """Every injectable field -> its source (SOURCES)."""
        return {f.name: f.metadata["source"] for f in dataclasses.fields(cls) if f.metadata.get("source")}

    def reads(self, key: str) -> bool:
        """Whether this configuration reads the injectable field `key`; subclasses narrow it (a magnitude
        criterion reads no calibration data)."""
        return True

    def needed_inputs(self, given: collections.abc.Iterable[str] = ()) -> dict[str, str]:
        """The inputs this configuration reads that are not among `given` (keys the caller set): what a
        caller such as `prunefx compress` should inject, field -> source."""
        given = set(given)
        return {key: source for key, source in self.inputs().items() if key not in given and self.reads(key)}


def given(config: Mapping[str, Any] | PassConfig | None, key: str) -> Any:
    """The value of option `key` in a pass's config as the pass received it (a mapping or a parsed config),
    before parsing: for the check a pass makes first."""
    if isinstance(config, PassConfig):
        return getattr(config, key, None)
    return (config or {}).get(key)
