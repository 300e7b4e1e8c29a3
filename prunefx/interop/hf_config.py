"""A written-back Hugging Face model's `config`, set to the pruned widths, so that `save_pretrained` and
`from_pretrained` rebuild the pruned model (prunefx/interop/write_back.py calls this last).

A config holds one value per field, so it describes a pruned model only when its widths are uniform. Each
width field's dense value is mapped to the sizes it became; the candidate configs are tried by building the
model class from each on the meta device and comparing every tensor shape and integer attribute with the
written-back module; none matching is one line naming the field. transformers is never imported here.
See docs/your-model.md, 'Hugging Face'.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import sys
from collections.abc import Iterator

import torch
from torch import nn

from prunefx.graph.errors import PrunefxError

# Fields that are no widths: counts of layers, labels, image geometry, token ids.
_NOT_WIDTHS = {"num_hidden_layers", "depths", "num_labels", "image_size", "patch_size", "patch_sizes", "num_channels",
               "strides", "sr_ratios", "num_encoder_blocks", "num_stages", "vocab_size", "max_position_embeddings",
               "pad_token_id", "bos_token_id", "eos_token_id", "semantic_loss_ignore_index", "encoder_stride",
               "chunk_size_feed_forward", "kernel_size", "mlp_ratios", "mlp_ratio", "out_indices", "_out_indices"}
MAX_CANDIDATES = 64
# Lists offered for one list field (`hidden_sizes`): every element's likeliest new size, every element dense,
# then mixes. Never every combination: a list of 24 widths with two sizes each would be 2**24 lists.
MAX_LIST_OPTIONS = 8


def is_hf_model(module: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def update_config(module: nn.Module, model: nn.Module, name: str,
                  unread: list[tuple[str, tuple[int, ...]]] = ()) -> list[str]:
    """Set `module.config` (a copy of the dense `model`'s) to the pruned widths, or raise PrunefxError naming what
    stops it (`unread`: tensors the captured call never reads that keep a changed width, unread_tensors.py). The
    attributes set as the class sets them (_differences) are returned: the caller's proof confirms them."""
    if not is_hf_model(module):
        return []
    mapping = _size_mapping(model, module)
    options = _field_options(module.config, mapping) + _extra_fields(module)
    dense_attributes = {path: _size_attributes(submodule) for path, submodule in model.named_modules()}
    chosen, likeliest = None, []  # the class built from the first candidate, for a refusal to name what differs
    for candidate in itertools.islice(_candidates(module.config, options), MAX_CANDIDATES):
        fresh = _built(module, candidate)
        likeliest = likeliest or [fresh]
        settled = _differences(module, fresh, dense_attributes) if fresh is not None else None
        if settled is not None and (chosen is None or len(settled) < len(chosen[2])):
            chosen = candidate, fresh, settled
        if settled == []:
            break  # the class builds the written-back module as it is
    if chosen is None:
        why = _why_not(module, mapping, unread, likeliest[0] if likeliest else None)
        raise PrunefxError(f"cannot write {name} back with its config: {type(module.config).__name__} has one value "
                           f"per field, and {why}, or keep the module without its config (prunefx.to_module(..., "
                           "config=False), prunefx prune --module)")
    candidate, fresh, settled = chosen
    _fold_scales(module, fresh, name)
    for path, key, value in settled:
        setattr(module.get_submodule(path), key, value)
    for key, value in candidate.to_dict().items():
        if getattr(module.config, key, None) != value and key != "transformers_version":
            setattr(module.config, key, value)  # in place: every submodule holding the config sees it
    return [f"{path}.{key}" if path else key for path, key, _ in settled]


def _why_not(module: nn.Module, mapping, unread, fresh: nn.Module | None) -> str:
    """Why no candidate config builds the written-back module, and what to do."""
    if unread:
        key, shape = unread[0]
        return (f"'{key}' {shape}, which the captured call never reads, keeps its dense width (no config of the "
                "pruned widths builds it): capture the model on the path that reads it (another input) to prune it")
    reason = _conflict(module.config, mapping)
    if not reason:
        reason = "the class refuses the likeliest config" if fresh is None else \
            next((mismatch.text for mismatch in _mismatches(module, fresh)), "no shape or size attribute differs")
    return (f"the pruned widths need more ({reason}): prune with ranking uniform, a channels target and a round_to "
            "every width keeps in proportion (every width the same fraction, head counts kept: prunefx prune "
            "--ranking uniform --channels F --round-to N)")


def _size_mapping(model: nn.Module, module: nn.Module) -> dict[int, set[int]]:
    """Each dense size -> the pruned sizes it became, over tensor dims and modules' integer attributes."""
    mapping: dict[int, set[int]] = {}
    mine = module.state_dict()
    for key, dense in model.state_dict().items():
        if key in mine and mine[key].dim() == dense.dim():
            for old, new in zip(dense.shape, mine[key].shape):
                mapping.setdefault(int(old), set()).add(int(new))
    dense_modules = dict(model.named_modules())
    for path, submodule in module.named_modules():
        for attribute, value in _int_attributes(submodule).items():
            old = _int_attributes(dense_modules[path]).get(attribute) if path in dense_modules else None
            if old is not None:
                mapping.setdefault(old, set()).add(value)
    return mapping


def _int_attributes(module: nn.Module) -> dict[str, int]:
    return {k: v for k, v in vars(module).items() if type(v) is int and not k.startswith("_")}


def _field_options(config, mapping) -> list[tuple[str, list]]:
    options: list[tuple[str, list]] = []
    for key, value in config.to_dict().items():
        if key in _NOT_WIDTHS:
            continue
        if type(value) is int and value > 1:
            options.append((key, _values(value, mapping)))
        elif isinstance(value, list) and value and all(type(v) is int for v in value):
            options.append((key, _list_values(value, mapping)))
    return options


def _list_values(values: list[int], mapping) -> list[list[int]]:
    """At most MAX_LIST_OPTIONS lists for a list field (see MAX_LIST_OPTIONS), likeliest first."""
    choices = [_values(v, mapping) for v in values]
    found: list[list[int]] = []
    for combination in itertools.chain([[c[0] for c in choices], list(values)], itertools.product(*choices)):
        if list(combination) not in found:
            found.append(list(combination))
        if len(found) == MAX_LIST_OPTIONS:
            break
    return found


def _values(value: int, mapping) -> list[int]:
    """The changed sizes first (the likely ones), then the dense value."""
    return sorted(mapping.get(value, set()) - {value}) + [value]


def _extra_fields(module: nn.Module) -> list[tuple[str, list]]:
    """Integer attributes the modules read that the config does not name, with one value in every module
    (a head_dim): offered as new config fields, absent first."""
    known = set(module.config.to_dict())
    seen: dict[str, set[int]] = {}
    for submodule in module.modules():
        for attribute, value in _int_attributes(submodule).items():
            seen.setdefault(attribute, set()).add(value)
    return [(key, [None, values.pop()]) for key, values in sorted(seen.items())
            if key not in known and len(values) == 1 and "dim" in key]


def _candidates(config, options):
    keys = [key for key, _ in options]
    for values in itertools.product(*(choices for _, choices in options)):
        candidate = copy.deepcopy(config)
        for key, value in zip(keys, values):
            if value is not None:
                setattr(candidate, key, value)
        yield candidate


def _built(module: nn.Module, config) -> nn.Module | None:
    """The model class built from `config` on the meta device; None where the class rejects it (a width not
    divisible by the heads, ...)."""
    try:
        with torch.device("meta"):
            return type(module)(config)
    except Exception:
        return None


@dataclasses.dataclass(frozen=True)
class _Mismatch:
    """One way the class built from a candidate differs from the written-back module."""

    text: str                                  # for a refusal
    attribute: tuple[str, str] | None = None   # (module path, name) of a size attribute; None: a tensor or a set
    ours: object = None                        # the attribute's values, lists as tuples
    theirs: object = None


def _mismatches(module: nn.Module, fresh: nn.Module) -> Iterator[_Mismatch]:
    """Where `fresh` (the class built from a candidate) differs from the written-back module: tensors, their shapes,
    then size attributes (integers, lists of them), in order."""
    mine, theirs = module.state_dict(), fresh.state_dict()
    for key in sorted(mine.keys() ^ theirs.keys()):
        where = "the pruned model" if key in mine else "the likeliest config's model"
        yield _Mismatch(f"'{key}' is in {where} only")
    for key in mine:
        if key in theirs and mine[key].shape != theirs[key].shape:
            yield _Mismatch(f"'{key}' is {tuple(mine[key].shape)}, the likeliest config builds "
                            f"{tuple(theirs[key].shape)}")
    fresh_modules = dict(fresh.named_modules())
    for path, submodule in module.named_modules():
        ours, built = _size_attributes(submodule), _size_attributes(fresh_modules.get(path, nn.Module()))
        if ours.keys() != built.keys():
            yield _Mismatch(f"'{path}' has size attributes the likeliest config's model does not, or the other way")
            continue
        for key in sorted(key for key in ours if ours[key] != built[key]):
            yield _Mismatch(f"'{path}.{key}' is {ours[key]}, the likeliest config sets {built[key]}", (path, key),
                            ours[key], built[key])


def _differences(module: nn.Module, fresh: nn.Module, dense_attributes: dict[str, dict]):
    """Where `fresh` (the class built from a candidate) has every tensor shape of the written-back module, the
    size attributes (integers, lists of them) that differ, each to be set as the class sets it: (path, attribute,
    the class's value); None where a tensor shape differs, or an attribute is neither the dense model's value nor
    the class's. Write-back sets an attribute by the value of a size the pruning changed, so it may leave one the
    captured call never reads (Swin's `num_features`, a record of the last stage's width) or set one that merely
    equals a width (a ViT's `image_size` of 64 beside a hidden size of 64): where the one value is the dense
    model's, the class's is what from_pretrained will build, and the caller's proof of the captured call confirms
    it."""
    settled = []
    for mismatch in _mismatches(module, fresh):
        if mismatch.attribute is None:
            return None
        path, key = mismatch.attribute
        if dense_attributes.get(path, {}).get(key) not in (mismatch.ours, mismatch.theirs):
            return None
        settled.append((path, key, getattr(fresh.get_submodule(path), key)))  # as the class holds it (a list, ...)
    return settled


def _size_attributes(module: nn.Module) -> dict[str, int | tuple]:
    """A module's integer attributes and its lists of integers (as tuples: `image_size` (64, 64))."""
    found: dict[str, int | tuple] = dict(_int_attributes(module))
    for key, value in vars(module).items():
        if not key.startswith("_") and isinstance(value, (tuple, list)) and value \
                and all(type(v) is int for v in value):
            found[key] = tuple(value)
    return found


def _fold_scales(module: nn.Module, fresh: nn.Module, name: str) -> None:
    """Float attributes that from_pretrained would set otherwise. The pruned Program keeps each attention's
    dense scale (1/sqrt of the dense head dim), and the model class derives it from the config's head dim:
    where an attention written to transformers' convention (a float `scaling`, a `q_proj` Linear) differs,
    the ratio goes into the query projection (softmax(q k^T s) = softmax((q s/s') k^T s'), exact up to
    rounding) and `scaling` takes the value the class computes. Any other float that differs: PrunefxError."""
    fresh_modules = dict(fresh.named_modules())
    for path, submodule in module.named_modules():
        theirs = {k: v for k, v in vars(fresh_modules[path]).items() if type(v) is float}
        for attribute, value in list(vars(submodule).items()):
            if type(value) is not float or attribute not in theirs or math.isclose(value, theirs[attribute]):
                continue
            query = getattr(submodule, "q_proj", None)
            if attribute != "scaling" or not isinstance(query, nn.Linear):
                raise PrunefxError(f"cannot write {name} back with its config: module '{path}' has {attribute} "
                                   f"{value:g}, which the model class built from the pruned config sets to "
                                   f"{theirs[attribute]:g}; keep the module without its config "
                                   "(prunefx.to_module(..., config=False), prunefx prune --module)")
            with torch.no_grad():
                for tensor in (query.weight, query.bias):
                    if tensor is not None:
                        tensor.mul_(value / theirs[attribute])
            setattr(submodule, attribute, theirs[attribute])  # "scaling", the value the class computes
            submodule._prunefx_scale_folded = True  # attention_scale.unfolded_queries, should a subgraph stand in


def _conflict(config, mapping) -> str:
    for key, value in config.to_dict().items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if key not in _NOT_WIDTHS and type(v) is int and len(mapping.get(v, set()) - {v}) > 1:
                became = " and ".join(map(str, sorted(mapping[v] - {v})))
                return f"{key} {v} became {became} in different layers"
    return ""
