"""The TensorRT Python API our code calls, held against TensorRT's own type stubs (PyPI `tensorrt-stubs`, 10.13),
and the TensorRT-10-only API and trtexec options held behind the version check (runtime/tensorrt/migration.py).

The checker reads a source file's AST: `trt` (the tensorrt module, as our code passes it around) and every
variable assigned from it gets a stub type (`builder = trt.Builder(logger)` is a Builder; `config =
builder.create_builder_config()` an IBuilderConfig, from the stub's return annotation), one name one type per
file. Every attribute read or written on a typed value must be a stub member (enum members, methods,
properties, base classes included), and every call must match one of the stub's signatures (keyword names,
positional count, required arguments). A member that TensorRT 11 removed may appear only inside an `if` that
tests the TensorRT version. The stubs install apart from the environment (Makefile: `--target
.venv/tensorrt-stubs`), since in site-packages their `tensorrt/__init__.pyi` would make `import tensorrt`
succeed as an empty namespace package.
"""

from __future__ import annotations

import ast
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from prunefx.runtime.tensorrt.migration import (
    PYTHON_REMOVED_IN_11,
    TRTEXEC_NO_OP_IN_11,
    TRTEXEC_OPTIONS,
    TRTEXEC_REMOVED_IN_11,
)
from prunefx.runtime.tensorrt.plan import OnnxTypes, network_plan
from prunefx.runtime.tensorrt.trtexec_command import TrtexecOptions, build_arguments, timing_arguments

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(os.environ.get("PRUNEFX_TENSORRT_STUBS", ROOT / ".venv" / "tensorrt-stubs"))
CHECKED = ("runtime/tensorrt/engine.py", "runtime/tensorrt/plan.py", "runtime/tensorrt/layer_profile.py")
pytestmark = pytest.mark.skipif(not (STUBS / "tensorrt_bindings" / "tensorrt.pyi").is_file(),
                                reason=f"tensorrt-stubs not found in {STUBS}: make setup installs them there")


@dataclass
class Signature:
    positional: list[str]
    required: int
    keywords: set[str]
    variadic: bool


@dataclass
class StubClass:
    members: dict[str, object] = field(default_factory=dict)  # name -> annotation text | [Signature, ...]
    bases: list[str] = field(default_factory=list)


def _signature(function: ast.FunctionDef, method: bool) -> Signature:
    arguments = function.args
    positional = [a.arg for a in arguments.posonlyargs + arguments.args][1 if method else 0:]
    required = len(positional) - len(arguments.defaults)
    return Signature(positional, required, set(positional) | {a.arg for a in arguments.kwonlyargs},
                     arguments.vararg is not None or arguments.kwarg is not None)


def _returns(function: ast.FunctionDef) -> str:
    return ast.unparse(function.returns) if function.returns is not None else ""


def load_stubs(folder: Path = STUBS) -> tuple[dict[str, StubClass], dict[str, object]]:
    """(classes by name, the module's members) from the stub files."""
    classes: dict[str, StubClass] = {}
    module: dict[str, object] = {}

    def read_class(node: ast.ClassDef, prefix: str = "") -> None:
        stub = classes.setdefault(prefix + node.name, StubClass(bases=[ast.unparse(b) for b in node.bases]))
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                is_property = any(ast.unparse(d) == "property" for d in item.decorator_list)
                static = any(ast.unparse(d) == "staticmethod" for d in item.decorator_list)
                stub.members[item.name] = _returns(item) if is_property else \
                    [*stub.members.get(item.name, []), (_signature(item, not static), _returns(item))]
            elif isinstance(item, ast.AnnAssign):
                stub.members[item.target.id] = ast.unparse(item.annotation)
            elif isinstance(item, ast.ClassDef):
                stub.members[item.name] = f"type[{prefix}{node.name}.{item.name}]"
                read_class(item, f"{prefix}{node.name}.")

    for path in (folder / "tensorrt_bindings" / "tensorrt.pyi", folder / "tensorrt_bindings" / "__init__.pyi",
                 folder / "tensorrt" / "__init__.pyi"):
        for node in _parsed(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                read_class(node)
                module[node.name] = f"type[{node.name}]"
            elif isinstance(node, ast.FunctionDef):
                module[node.name] = [(_signature(node, False), _returns(node))]
            elif isinstance(node, ast.AnnAssign):
                module[node.target.id] = ast.unparse(node.annotation)
    return classes, module


def _parsed(text: str) -> ast.Module:
    """The stub's AST. The generated stubs hold a few signatures Python cannot parse (a required argument after
    ones with defaults): such a `def` keeps its name and return type and takes any arguments."""
    lines = text.splitlines()
    while True:
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as error:
            line = lines[error.lineno - 1]
            head, _, rest = line.partition("(")
            if not head.lstrip().startswith("def ") or ") -> " not in rest:
                raise
            lines[error.lineno - 1] = f"{head}(self, *args, **kwargs) -> {rest.rsplit(') -> ', 1)[1]}"


def _type_name(annotation: str) -> str | None:
    """'typing.ClassVar[BuilderFlag]' -> 'BuilderFlag', 'INetworkDefinition' -> itself; None for others."""
    text = annotation.removeprefix("typing.ClassVar[").removesuffix("]").strip("'\"")
    return text if text and text.replace(".", "").replace("_", "").isalnum() else None


class Checker:
    """Findings (one line each) for one source text; see the module docstring."""

    def __init__(self, classes, module, seeds: dict[str, str] | None = None):
        self.classes, self.module = classes, module
        self.types: dict[str, str] = {"trt": "<module>", "self.trt": "<module>", **(seeds or {})}
        self.findings: list[str] = []

    def member(self, owner: str, name: str):
        """The stub member `name` of `owner` (a class name or '<module>'), searching base classes."""
        if owner == "<module>":
            return self.module.get(name)
        owner = owner.removeprefix("type[").removesuffix("]")
        stub = self.classes.get(owner)
        while stub is not None:
            if name in stub.members:
                return stub.members[name]
            stub = next((self.classes[b] for b in stub.bases if b in self.classes), None)
        return None

    def type_of(self, node: ast.AST) -> str | None:
        found = self._type_of(node)  # only TensorRT's own types: `str` and friends are not checked
        bare = (found or "").removeprefix("type[").removesuffix("]")
        return found if found == "<module>" or bare in self.classes else None

    def _type_of(self, node: ast.AST) -> str | None:
        key = ast.unparse(node)
        if key in self.types:
            return self.types[key]
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value)
            found = self.member(owner, node.attr) if owner else None
            if isinstance(found, str):
                return found if found.startswith("type[") else _type_name(found)
        if isinstance(node, ast.Call):
            callee = self.type_of(node.func)
            if callee and callee.startswith("type["):
                return callee.removeprefix("type[").removesuffix("]")  # a constructor
            found = self._callable(node.func)
            if isinstance(found, list) and found:
                return _type_name(found[0][1])
        return None

    def _callable(self, func: ast.AST):
        if isinstance(func, ast.Attribute):
            owner = self.type_of(func.value)
            return self.member(owner, func.attr) if owner else None
        return None

    def learn(self, tree: ast.AST) -> None:
        for _ in range(3):  # assignments may come before the ones that type their right-hand side
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign):
                    targets = [(t, node.value) for t in node.targets if not isinstance(t, ast.Tuple)]
                    for target in (t for t in node.targets if isinstance(t, ast.Tuple)):
                        if isinstance(node.value, ast.Tuple):
                            targets += list(zip(target.elts, node.value.elts, strict=False))
                    for target, value in targets:
                        found = self.type_of(value)
                        if found:
                            self.types[ast.unparse(target)] = found

    def check(self, source: str, name: str = "<source>") -> list[str]:
        tree = ast.parse(source)
        self.learn(tree)
        self._walk(tree, guarded=False, name=name)
        return self.findings

    def _walk(self, node: ast.AST, *, guarded: bool, name: str) -> None:
        if isinstance(node, ast.If) and _tests_version(node.test):
            for child in node.body + node.orelse:
                self._walk(child, guarded=True, name=name)
            return
        if isinstance(node, ast.Attribute):
            self._attribute(node, guarded, name)
        elif isinstance(node, ast.Call):
            self._call(node, name)
        for child in ast.iter_child_nodes(node):
            self._walk(child, guarded=guarded, name=name)

    def _attribute(self, node: ast.Attribute, guarded: bool, name: str) -> None:
        owner = self.type_of(node.value)
        if owner is None:
            return
        where = f"{name}:{node.lineno}: {ast.unparse(node)}"
        if self.member(owner, node.attr) is None:
            self.findings.append(f"{where}: {owner.removeprefix('type[').removesuffix(']')} has no '{node.attr}'")
            return
        qualified = f"{owner.removeprefix('type[').removesuffix(']')}.{node.attr}"
        if qualified in PYTHON_REMOVED_IN_11 and not guarded:
            self.findings.append(f"{where}: {qualified} was removed in TensorRT 11: use it behind the version check")

    def _call(self, node: ast.Call, name: str) -> None:
        found = self._callable(node.func)
        callee = self.type_of(node.func)
        if callee and callee.startswith("type["):
            found = self.member(callee, "__init__")
        if not isinstance(found, list) or any(isinstance(a, ast.Starred) for a in node.args):
            return
        keywords = {k.arg for k in node.keywords if k.arg}
        positional = len(node.args)
        if isinstance(node.func, ast.Attribute) and (self.type_of(node.func.value) or "").startswith("type["):
            positional -= 1  # a method called on its class (`trt.IProfiler.__init__(self)`) is given its self
        if not any(_fits(signature, positional, keywords) for signature, _ in found):
            self.findings.append(f"{name}:{node.lineno}: {ast.unparse(node)}: no stub signature takes "
                                 f"{len(node.args)} positional arguments and {sorted(keywords) or 'no keywords'}")


def _fits(signature: Signature, positional: int, keywords: set[str]) -> bool:
    if signature.variadic:
        return True
    named = signature.positional[:positional]
    covered = set(named) | keywords
    return (positional <= len(signature.positional) and keywords <= signature.keywords - set(named)
            and all(p in covered for p in signature.positional[:signature.required]))


def _tests_version(test: ast.AST) -> bool:
    text = ast.unparse(test)
    return "tensorrt_major" in text or "__version__" in text or "major" in text.split()[0]


@pytest.fixture(scope="module")
def stubs():
    return load_stubs()


# The profiler receives prunefx's Engine (runtime/tensorrt/engine.Engine), whose `context` is TensorRT's.
SEEDS = {"runtime/tensorrt/layer_profile.py": {"engine.context": "IExecutionContext"}}


@pytest.mark.parametrize("path", CHECKED)
def test_our_tensorrt_calls_exist_in_the_stubs_with_the_arguments_we_pass(stubs, path):
    checker = Checker(*stubs, seeds=SEEDS.get(path))
    assert checker.check((ROOT / path).read_text(), path) == []
    assert len(checker.types) > 2 + len(SEEDS.get(path, {})) or path.endswith("profile.py")


def test_the_checker_types_what_the_engine_builder_uses(stubs):
    checker = Checker(*stubs)
    checker.check((ROOT / "runtime/tensorrt/engine.py").read_text())
    expected = {"builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition",
                "parser": "OnnxParser", "runtime": "Runtime", "engine": "ICudaEngine",
                "self.context": "IExecutionContext", "inspector": "EngineInspector"}
    assert {name: checker.types.get(name) for name in expected} == expected


MISSPELLED = """
builder = trt.Builder(logger)
config = builder.create_builder_config()
config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pool_size=1 << 30)
network = builder.create_netwrok(0)
config.set_flag(trt.BuilderFlag.SPARSE_WIEGHTS)
config.set_timing_cache(config.create_timing_cache(b""), ignore=False)
"""


def test_misspelled_calls_members_and_keywords_are_found(stubs):
    findings = Checker(*stubs).check(MISSPELLED)
    assert len(findings) == 3, findings
    assert "create_netwrok" in findings[0] and "SPARSE_WIEGHTS" in findings[1] and "ignore" in findings[2]


def test_a_tensorrt_10_only_flag_outside_the_version_check_is_found(stubs):
    unguarded = "config.set_flag(trt.BuilderFlag.FP16)\n"
    guarded = "if tensorrt_major(trt.__version__) == 10:\n    config.set_flag(trt.BuilderFlag.FP16)\n"
    seeds = {"config": "IBuilderConfig"}
    [finding] = Checker(*stubs, seeds=seeds).check(unguarded)
    assert "BuilderFlag.FP16 was removed in TensorRT 11" in finding
    assert Checker(*stubs, seeds=seeds).check(guarded) == []


VERSIONS = ("8.6.1", "10.3.0", "11.1.0")
PRECISIONS = ("fp32", "fp16", "int8")
FILES = (OnnxTypes(has_qdq=False, float16=False), OnnxTypes(has_qdq=True, float16=False),
         OnnxTypes(has_qdq=False, float16=True))


def test_builder_flags_of_every_plan_exist_and_none_removed_in_11_is_planned_there(stubs):
    classes, _ = stubs
    for version, precision, types, sparse in itertools.product(VERSIONS, PRECISIONS, FILES, (False, True)):
        if precision == "int8" and not types.has_qdq:
            continue  # refused before any flag is chosen
        if version.startswith("11") and precision == "fp16" and types.has_qdq and not types.float16:
            continue  # refused too: no FP16 for a Q/DQ file's other layers on 11 (plan.QDQ_FP16_STRONG)
        flags = network_plan(version, precision, types, sparse=sparse).builder_flags
        assert set(flags) <= set(classes["BuilderFlag"].members), (version, precision, flags)
        if version.startswith("11"):
            assert not {f"BuilderFlag.{flag}" for flag in flags} & PYTHON_REMOVED_IN_11, (precision, flags)


def trtexec_findings(arguments_for) -> list[str]:
    """Options `arguments_for(version, options, types)` passes that the version's trtexec does not document."""
    findings = []
    for version, precision, types, sparse, graphs in itertools.product(("10.3.0", "11.1.0"), PRECISIONS, FILES,
                                                                        (False, True), (False, True)):
        if (precision == "int8" and not types.has_qdq) or (precision == "fp16" and version.startswith("11")
                                                          and not types.float16):
            continue  # refused, or lowered to an FP16 file first (run_trtexec)
        options = TrtexecOptions(precision=precision, sparse=sparse, use_cuda_graph=graphs,
                                 no_data_transfers=not graphs, dla_core=0, input_shapes=(("x", (2, 3)),))
        major = int(version.split(".")[0])
        for argument in arguments_for(version, options, types):
            flag = argument.split("=")[0]
            if flag.startswith("--") and (flag not in TRTEXEC_OPTIONS[major]
                                          or (major == 11 and flag in TRTEXEC_NO_OP_IN_11)):
                findings.append(f"trtexec {version} {precision}: {flag}")
    return findings


def _ours(version, options, types):
    build = build_arguments("m.onnx", options, engine_path="e", tensorrt_version=version, types=types,
                            timing_cache="t", detailed=True)
    timing = timing_arguments("e", options, tensorrt_version=version, profile_path="p", layer_info_path="l")
    return build[1:] + timing[1:]


def test_trtexec_options_are_documented_for_each_version():
    assert trtexec_findings(_ours) == []


def test_a_trtexec_10_only_option_on_11_is_found():
    def always_fp16(version, options, types):
        return [*_ours(version, options, types), "--fp16"]

    found = trtexec_findings(always_fp16)
    assert found and all("11.1.0" in line and "--fp16" in line for line in found)
    assert TRTEXEC_REMOVED_IN_11 <= TRTEXEC_OPTIONS[10] and not TRTEXEC_REMOVED_IN_11 & TRTEXEC_OPTIONS[11]
