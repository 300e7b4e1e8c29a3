"""Pretrained weights for a built model: a state dict file, checked against the model before it is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from prunefx.models.spec import WeightsError, require_file


def load_weights(module: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a state dict file (raw, or under 'state_dict' / 'model') into `module`; return it."""
    path = Path(path).expanduser()  # bash leaves the `~` of `--weights=~/w.pth` alone
    if not path.exists():
        raise WeightsError(f"weights file {path} not found")
    require_file(path, "weights file", WeightsError)
    try:
        # weights_only: a weights file must never run code on load.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, KeyError, RuntimeError)
        raise WeightsError(
            f"cannot read {path} as a state dict ({type(exc).__name__}); save it with "
            "torch.save(model.state_dict(), FILE)") from exc
    state = _unwrap_state_dict(loaded, path)
    # Checkpoints saved from DataParallel / DistributedDataParallel prefix every key with 'module.'.
    consume_prefix_in_state_dict_if_present(state, "module.")
    _check_fits(module, state, path)
    # strict=False only for num_batches_tracked, which older files (torchvision's own) may lack.
    module.load_state_dict(state, strict=False)
    return module


def _unwrap_state_dict(loaded, path: Path):
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        keys = ", ".join(map(str, list(loaded)[:5])) if isinstance(loaded, Mapping) else type(loaded).__name__
        raise WeightsError(f"{path} holds no state dict of tensors (found: {keys})")
    return loaded


def _few(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def _check_fits(module: torch.nn.Module, state: Mapping, path: Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if k in state and isinstance(v, torch.Tensor) and state[k].shape != v.shape]
    problems = [f"{label}: {_few(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise WeightsError(f"weights {path.name} do not fit the model; " + "; ".join(problems))
