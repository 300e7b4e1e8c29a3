"""`prunefx inspect`'s flags (the command: prunefx/cli/commands/inspect.py)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--nodes", action="store_true",
                        help="also list every operation node: its name (what --keep and skip_nodes take), operator "
                             "and the module it runs in")
