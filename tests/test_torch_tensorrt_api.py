"""The Torch-TensorRT calls of runtime/tensorrt/torch_compiled.py held against Torch-TensorRT's own source.

Torch-TensorRT needs CUDA and TensorRT to import, but its wheel (PyPI `torch-tensorrt`, the release built for our
torch) installs without them as files: `make setup` puts it in .venv/torch-tensorrt with --no-deps, and this test
reads its Python source with `ast`, never importing it. Every `torch_tensorrt.a.b(...)` the backend calls must
resolve in that source to a function (through packages, `from .x import name` re-exports included), and every
keyword it passes, explicitly or through a `**settings` dict built from literal keys, must be a parameter of
that function. A keyword the reference lacks is allowed only when it is set inside an `if` that asks
`inspect.signature(...).parameters` for it (a keyword kept for other releases, as `enabled_precisions`).
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("PRUNEFX_TORCH_TENSORRT_SOURCE", ROOT / ".venv" / "torch-tensorrt"))
BACKEND = ROOT / "runtime" / "tensorrt" / "torch_compiled.py"
pytestmark = pytest.mark.skipif(not (REFERENCE / "torch_tensorrt" / "__init__.py").is_file(),
                                reason=f"Torch-TensorRT's source not found in {REFERENCE}: make setup installs it there")


def _module_file(parts: list[str]) -> Path | None:
    base = REFERENCE.joinpath(*parts)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def resolve(dotted: str) -> ast.FunctionDef | None:
    """The `def` that `torch_tensorrt.<dotted>` names in the reference source, or None."""
    parts = ["torch_tensorrt", *dotted.split(".")]
    path = _module_file(parts[:-1])
    return _defined(path, parts[:-1], parts[-1]) if path is not None else None


def _defined(path: Path, package: list[str], name: str, depth: int = 0) -> ast.FunctionDef | None:
    """`name` defined in the module at `path`: a def, or a `from .x import name` followed to its def."""
    if depth > 5:
        return None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            here = package if path.name == "__init__.py" else package[:-1]
            base = here[:len(here) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            found = _module_file(target)
            if found is not None:
                return _defined(found, target, original, depth + 1)
    return None


def parameters(function: ast.FunctionDef) -> set[str]:
    arguments = function.args
    return {a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}


def _dotted(node: ast.AST) -> str | None:
    """'dynamo.compile' for `torch_tensorrt.dynamo.compile`, None for anything not rooted at torch_tensorrt."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return ".".join(reversed(names)) if isinstance(node, ast.Name) and node.id == "torch_tensorrt" and names else None


def _asks_signature(test: ast.AST, key: str) -> bool:
    text = ast.unparse(test)
    return "signature(" in text and ".parameters" in text and repr(key) in text.replace('"', "'")


def dict_keys(tree: ast.AST, name: str) -> dict[str, bool]:
    """Literal keys put in the dict `name` (assigned or subscripted): key -> guarded by a signature test."""
    keys: dict[str, bool] = {}

    def visit(node: ast.AST, guards: list[ast.AST]) -> None:
        if isinstance(node, ast.If):
            for child in node.body:
                visit(child, [*guards, node.test])
            for child in node.orelse:
                visit(child, guards)
            return
        if isinstance(node, ast.Assign) and any(ast.unparse(t) == name for t in node.targets):
            for literal in (n for n in ast.walk(node.value) if isinstance(n, ast.Dict)):
                keys.update({k.value: False for k in literal.keys if isinstance(k, ast.Constant)})
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and ast.unparse(target.value) == name \
                        and isinstance(target.slice, ast.Constant):
                    key = target.slice.value
                    keys[key] = any(_asks_signature(test, key) for test in guards)
        for child in ast.iter_child_nodes(node):
            visit(child, guards)

    visit(tree, [])
    return keys


def findings(source: str) -> list[str]:
    """One line per Torch-TensorRT name or keyword in `source` that the reference does not have."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        dotted = _dotted(node.func) if isinstance(node, ast.Call) else None
        if dotted is None:
            continue
        function = resolve(dotted)
        if function is None:
            found.append(f"line {node.lineno}: torch_tensorrt.{dotted} is not a function of the reference")
            continue
        accepted = parameters(function)
        keywords = {k.arg: False for k in node.keywords if k.arg is not None}
        for spread in (k.value for k in node.keywords if k.arg is None):
            keywords.update(dict_keys(tree, ast.unparse(spread)))
        found += [f"line {node.lineno}: torch_tensorrt.{dotted} has no keyword {key!r}"
                  for key, guarded in keywords.items() if key not in accepted and not guarded]
    return found


def test_the_backend_calls_only_what_the_reference_has():
    assert findings(BACKEND.read_text()) == []


def test_the_checker_reads_the_call_the_backend_makes():
    """The checker is not vacuous: it finds the call and its keywords in the backend."""
    compile_ = resolve("dynamo.compile")
    assert compile_ is not None and {"arg_inputs", "sparse_weights"} <= parameters(compile_)
    assert "torch_tensorrt.dynamo.compile(" in BACKEND.read_text()
    assert dict_keys(ast.parse(BACKEND.read_text()), "settings") == {"sparse_weights": False,
                                                                      "enabled_precisions": True}


@pytest.mark.parametrize("old, new, expected", [
    ("arg_inputs=", "arg_input=", "has no keyword 'arg_input'"),  # a misspelled keyword
    ('{"sparse_weights": sparse}', '{"sparse_weight": sparse}', "has no keyword 'sparse_weight'"),
    ("torch_tensorrt.dynamo.compile(", "torch_tensorrt.dynamo.compil(", "dynamo.compil is not a function"),
    ('settings["enabled_precisions"] = {torch.float16}  #', 'settings["enabled_precisions"] = {torch.float16}\n#',
     None),  # still inside the guarded `if`: allowed
])
def test_a_planted_mistake_is_found(old, new, expected):
    source = BACKEND.read_text()
    assert old in source
    lines = findings(source.replace(old, new, 1))
    assert (lines == []) if expected is None else any(expected in line for line in lines), lines


def test_a_keyword_of_other_releases_without_the_signature_check_is_found():
    """`enabled_precisions` left Torch-TensorRT's dynamo.compile signature (2.14 types explicitly): set without
    asking the signature first, it is a finding."""
    source = BACKEND.read_text()
    guard = ' and "enabled_precisions" in fp16_keywords(inspect.signature(compile_function).parameters)'
    unguarded = source.replace(guard, "")
    assert unguarded != source
    assert any("has no keyword 'enabled_precisions'" in line for line in findings(unguarded))


def _compile_before_2_10(exported, *, arg_inputs, enabled_precisions=frozenset(), use_explicit_typing=False):
    pass


def _compile_2_10_to_2_13(exported, *, arg_inputs, enabled_precisions=frozenset(), use_explicit_typing=True):
    pass


def _compile_without_precisions(exported, *, arg_inputs, use_explicit_typing=True):
    pass


def _compile_without_typing(exported, *, arg_inputs, enabled_precisions=frozenset()):
    pass


@pytest.mark.parametrize("compile_function, asks", [
    (_compile_before_2_10, True), (_compile_without_typing, True),
    # 2.10 to 2.13 assert that enabled_precisions is not given while use_explicit_typing is on (its default)
    (_compile_2_10_to_2_13, False), (_compile_without_precisions, False)])
def test_fp16_asks_for_half_precision_only_where_the_release_takes_it(compile_function, asks):
    from prunefx.runtime.tensorrt.torch_compiled import fp16_keywords
    expected = ("enabled_precisions",) if asks else ()
    assert fp16_keywords(inspect.signature(compile_function).parameters) == expected
