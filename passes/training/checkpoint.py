"""Checkpoint files of the recovery trainer (passes/training/engine.py).

A checkpoint directory holds `program.pt2` (Program.save, eval mode) and `trainer_state.pt` (optimizer,
scheduler, step, data position, RNG states of every process, logs; plain tensors and numbers, read with
`torch.load(weights_only=True)`). The state records the program file's SHA-256, so a crash between the
two writes is caught on resume instead of mixing one save's weights with another's optimizer.

A save writes both files under partial names, each synced to the disk, then replaces the program, then the
state: the commit (the folder synced after it). An interrupt before the program is replaced leaves the previous
pair as it was (the partial files removed); one after it finishes the commit; a process killed (or a power cut)
between the two replaces leaves the new state under its partial name, whose hash matches the new program, and
`read_checkpoint` finishes that commit.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch

from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError, first_line
from prunefx.graph.fingerprint import file_sha256
from prunefx.graph.placement import move_program
from prunefx.graph.whole_files import make_folder, replaced_whole, sync_folder
from prunefx.passes.training.config import TrainingError

PROGRAM_FILE = "program.pt2"
STATE_FILE = "trainer_state.pt"
_STATE_FORMAT = 1
_WRITTEN_KEYS = ("parameters", "program_sha256")  # what write_checkpoint adds to every state
_PARTIAL_PROGRAM, _PARTIAL_STATE = "program.partial.pt2", "trainer_state.partial.pt"


def write_checkpoint(directory: Path, program: Program, state: dict) -> None:
    """Save a copy of `program` and `state` (plus the format, parameter shapes and program hash)."""
    make_folder(directory)
    _finish_killed_save(directory)  # else a failure of this save would delete the only state matching the program
    snapshot = Program(copy.deepcopy(program.module), program.example_inputs, name=program.name,
                       analysis=copy.deepcopy(program.analysis), output_shapes=list(program.output_shapes))
    snapshot.normalisation = program.normalisation
    move_program(snapshot, "cpu")  # a checkpoint reads back on any machine, whatever device trained it
    program_tmp, state_tmp = directory / _PARTIAL_PROGRAM, directory / _PARTIAL_STATE
    try:
        snapshot.eval().save(program_tmp)
        state = {"format": _STATE_FORMAT, "parameters": parameter_shapes(program.module),
                 "program_sha256": file_sha256(program_tmp), **state}
        with replaced_whole(state_tmp) as partial:  # on the disk before the commit: a power cut keeps one pair
            torch.save(state, partial)
        os.replace(program_tmp, directory / PROGRAM_FILE)
    finally:
        if program_tmp.exists():  # stopped before the program was replaced: the previous pair stands
            program_tmp.unlink()
            state_tmp.unlink(missing_ok=True)
        elif state_tmp.exists():  # the program is the new one: its state follows, whatever stopped the save
            os.replace(state_tmp, directory / STATE_FILE)
        sync_folder(directory)


def _finish_killed_save(directory: Path) -> None:
    """A save killed between its two replaces left its state under the partial name: put in place (as
    `read_checkpoint` would) before a new save, whose cleanup removes partial files when it fails."""
    if (directory / _PARTIAL_STATE).is_file() and (directory / PROGRAM_FILE).is_file():
        _matching_state(directory)


def read_checkpoint(directory: Path) -> tuple[Program, dict] | None:
    """The saved program and state, None when the directory holds no checkpoint; TrainingError when it
    holds half of one, a damaged file, or files from two different saves."""
    program_path, state_path = directory / PROGRAM_FILE, directory / STATE_FILE
    if not program_path.exists() and not state_path.exists():
        return None
    state = _matching_state(directory) if program_path.is_file() else None
    if state is None:
        if not (program_path.is_file() and state_path.is_file()):
            raise TrainingError(f"incomplete checkpoint in {directory}: need both {PROGRAM_FILE} and {STATE_FILE}")
        _read_state(state_path)  # a damaged state says so
        raise TrainingError(f"{program_path} and {state_path} come from different saves (interrupted write?); "
                            "delete the directory to start over")
    try:
        program = Program.load(program_path)
    except PrunefxError as error:
        raise TrainingError(f"cannot resume from {directory}: {error}") from error
    if state["parameters"] != parameter_shapes(program.module):
        raise TrainingError(f"the trainer state in {directory} does not match its program's parameters")
    return program, state


def check_settings(state: dict, expected: dict, directory: Path) -> None:
    """Refuse to resume under settings (steps, optimizer, processes) other than the checkpoint's."""
    for key, value in expected.items():
        if state[key] != value:
            raise TrainingError(f"the checkpoint in {directory} was written with {key}={state[key]}, this run "
                                f"has {key}={value}; resume with the same settings or use a new checkpoint_dir")


def _read_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for damaged files
        raise TrainingError(f"cannot read {path} (corrupt checkpoint? delete it to start over): "
                            f"{first_line(error)}") from error
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise TrainingError(f"{path} is not a prunefx trainer state (format {_STATE_FORMAT})")
    missing = [key for key in _WRITTEN_KEYS if key not in state]
    if missing:
        raise TrainingError(f"{path} is not a whole prunefx trainer state (it has no {', '.join(missing)}); delete "
                            "it to start over")
    return state


def _matching_state(directory: Path) -> dict | None:
    """The state whose hash is the program's: trainer_state.pt, or the partial state a save killed between its two
    replaces left beside its program (module docstring), then put in place; None when neither is. The state file
    is read again last: every process of a distributed run resumes, and another may finish that save first."""
    program_hash = file_sha256(directory / PROGRAM_FILE)
    for name in (STATE_FILE, _PARTIAL_STATE, STATE_FILE):
        path = directory / name
        try:
            state = _read_state(path) if path.is_file() else None
        except TrainingError:  # damaged, or moved while read: the next candidate
            continue
        if state is not None and state["program_sha256"] == program_hash:
            if name == _PARTIAL_STATE:
                with contextlib.suppress(FileNotFoundError):  # another process finished the commit
                    os.replace(path, directory / STATE_FILE)
            return state
    return None


def parameter_shapes(module: torch.nn.Module) -> list[list]:
    return [[name, list(p.shape)] for name, p in module.named_parameters()]
