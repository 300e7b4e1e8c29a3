"""Where TensorRT engines are cached on disk, and under which keys (pure, testable without TensorRT).

Building an engine takes seconds to minutes, so engines are cached on disk under the sha256 of
(ONNX file bytes and the external data it names, build options, TensorRT version, GPU name, the precision
plan's rules): any change to the model, its weights, the precision, the sparsity flag, the calibration data,
TensorRT, the GPU or how plan.py builds a file makes a new key; nothing else does. The timing cache (per-tactic
timings the builder measures) is keyed by TensorRT version and GPU name only: timings of a kernel on a shape do
not depend on which model asked for them, so every build on this GPU shares it and later builds are faster. Folder: $PRUNEFX_CACHE_DIR/tensorrt, default ~/.cache/prunefx.
A budget search builds an engine per candidate, each a new key never met again: the folder keeps the engines used
last, up to MAX_CACHE_BYTES (trim_engine_cache).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunefx.graph.cache_folder import cache_root
from prunefx.runtime.onnx.external import external_data_digest
from prunefx.runtime.tensorrt.plan import BuildOptions


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: parts cannot run into each other
        digest.update(part)
    return digest.hexdigest()


PLAN_RULES = 2  # raised whenever plan.network_plan builds a file differently: an engine of the old rules is stale


def engine_cache_key(onnx_bytes: bytes, options: BuildOptions, tensorrt_version: str, gpu_name: str) -> str:
    """sha256 of the ONNX file's bytes, the build options, the TensorRT version, the GPU name and the rules the
    precision plan follows."""
    canonical = json.dumps(options.to_dict(), sort_keys=True).encode()
    return _sha256(onnx_bytes, canonical, tensorrt_version.encode(), gpu_name.encode(), f"plan {PLAN_RULES}".encode())


def engine_file_key(onnx_path: Path, options: BuildOptions, tensorrt_version: str, gpu_name: str) -> str:
    """engine_cache_key of the file at `onnx_path` and of the external data it names: a model over 2 GB keeps its
    weights beside it, and new weights under the same side file's name are a new engine."""
    return engine_cache_key(onnx_path.read_bytes() + external_data_digest(onnx_path), options, tensorrt_version,
                            gpu_name)


def timing_cache_key(tensorrt_version: str, gpu_name: str) -> str:
    return _sha256(b"timing-cache", tensorrt_version.encode(), gpu_name.encode())


def calibration_digest(batches: Sequence[Sequence[torch.Tensor]]) -> str:
    """sha256 of the calibration batches' shapes and values: different data, different INT8 engine."""
    parts = []
    for batch in batches:
        for tensor in batch:
            array = np.ascontiguousarray(tensor.detach().cpu().numpy())
            parts += [str(array.shape).encode(), str(array.dtype).encode(), array.tobytes()]
    return _sha256(*parts)


def default_cache_dir() -> Path:
    return cache_root() / "tensorrt"


MAX_CACHE_BYTES = 20 << 30  # engines and the files built beside them: a few hundred ResNet-50 engines
_KEYED = re.compile(r"([0-9a-f]{64})\..+")  # <key>.engine, .json, .fp16.onnx, .qdq.onnx (not the timing caches)


def trim_engine_cache(folder: Path, keep: str, limit: int = MAX_CACHE_BYTES) -> list[str]:
    """Remove the engines used least recently (each key's files together; an engine is used when built or loaded,
    which touches it) until the folder's engines take at most `limit` bytes; the engine `keep` stays. The removed
    keys."""
    files: dict[str, list[Path]] = defaultdict(list)
    for entry in folder.iterdir():
        found = _KEYED.fullmatch(entry.name)
        if found and entry.is_file() and not entry.is_symlink():
            files[found.group(1)].append(entry)
    stats = {key: [path.stat() for path in paths] for key, paths in files.items()}
    total = sum(stat.st_size for found in stats.values() for stat in found)
    removed = []
    for key in sorted(stats, key=lambda k: max(stat.st_mtime for stat in stats[k])):  # the least recent first
        if total <= limit:
            break
        if key == keep:
            continue
        for path in files[key]:
            path.unlink(missing_ok=True)
        total -= sum(stat.st_size for stat in stats[key])
        removed.append(key)
    return removed
