"""runtime/tensorrt/engine.py (with tensorrt_plan.py and tensorrt_cache.py) and runtime/tensorrt/layer_profile.py: engine
cache keys, the mapping of TensorRT layer names back to ONNX and Program nodes on real exported files, the errors without TensorRT, and (where
TensorRT and a GPU are present) real engines: parity with ONNX Runtime, the cache, the per-layer profile."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.graph import capture
from prunefx.models.small import resnet20
from prunefx.runtime import (
    BackendUnavailableError,
    BuildOptions,
    DeviceToolError,
    MeasurementError,
    OnnxRuntimeSession,
    build_layer_profile,
    engine_cache_key,
    export_onnx,
    format_profile_table,
    map_to_program,
    onnx_node_origins,
    onnx_nodes_of_layer,
    parse_engine_information,
)
from prunefx.runtime.onnx.provenance import _torchscript_scope
from prunefx.runtime.tensorrt import engine as tensorrt_engine
from prunefx.runtime.tensorrt.engine import _build
from prunefx.runtime.tensorrt.engine_cache import calibration_digest, timing_cache_key
from prunefx.runtime.tensorrt.input_shapes import dynamic_input_shapes
from prunefx.runtime.tensorrt.plan import (
    NetworkPlan,
    OnnxTypes,
    network_creation_flags,
    network_plan,
    onnx_types,
)

torch.set_num_threads(1)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
requires_tensorrt = pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()),
    reason="tensorrt is not installed (pip install tensorrt)" if not HAS_TENSORRT else "no CUDA device")


# --- cache keys ----------------------------------------------------------------------------------

def test_engine_key_is_stable_and_changes_with_every_input():
    onnx_bytes, options = b"onnx model bytes", BuildOptions(precision="fp16", sparse=True)
    key = engine_cache_key(onnx_bytes, options, "10.3.0", "Orin")
    assert key == engine_cache_key(bytes(onnx_bytes), BuildOptions(precision="fp16", sparse=True), "10.3.0", "Orin")
    assert len(key) == 64 and int(key, 16) >= 0
    changed = [
        engine_cache_key(b"onnx model bytez", options, "10.3.0", "Orin"),
        engine_cache_key(onnx_bytes, BuildOptions(precision="fp32", sparse=True), "10.3.0", "Orin"),
        engine_cache_key(onnx_bytes, BuildOptions(precision="fp16", sparse=False), "10.3.0", "Orin"),
        engine_cache_key(onnx_bytes, BuildOptions(precision="fp16", sparse=True, workspace_mib=512), "10.3.0", "Orin"),
        engine_cache_key(onnx_bytes, BuildOptions(precision="fp16", sparse=True, calibration_digest="ab"),
                         "10.3.0", "Orin"),
        engine_cache_key(onnx_bytes, options, "10.4.0", "Orin"),
        engine_cache_key(onnx_bytes, options, "10.3.0", "NVIDIA H100 80GB HBM3"),
    ]
    assert len({key, *changed}) == 1 + len(changed)
    # parts are length-prefixed: moving bytes from one part to the next is a different key
    assert engine_cache_key(b"ab", options, "c", "d") != engine_cache_key(b"a", options, "bc", "d")


def test_an_engine_is_built_anew_for_new_weights_a_model_keeps_beside_it(tmp_path, monkeypatch):
    """A model over 2 GB keeps its weights in a side file: new weights under the same name got the old engine."""
    from onnx import helper, numpy_helper
    trt, _ = _fake_tensorrt("10.3.0", explicit_batch=True, strongly_typed=True, weak_flags=True)
    loaded = []
    monkeypatch.setattr(tensorrt_engine, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_engine, "require_cuda", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "fake GPU")
    monkeypatch.setattr(tensorrt_engine.Engine, "load", lambda path, *_, **__: loaded.append(path.name))
    model = tmp_path / "model" / "m.onnx"
    model.parent.mkdir()

    def write(weights):
        (tmp_path / "model" / "m.onnx.data").unlink(missing_ok=True)  # onnx appends to a side file already there
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
                                  [numpy_helper.from_array(weights, "w")])
        onnx.save(helper.make_model(graph), str(model), save_as_external_data=True, location="m.onnx.data",
                  size_threshold=0)
        return model.read_bytes()

    graph_bytes = write(np.eye(4, dtype=np.float32))
    for _ in range(2):  # built, then read from the cache
        tensorrt_engine.build_engine(model, cache_dir=tmp_path / "cache")
    assert write(2 * np.eye(4, dtype=np.float32)) == graph_bytes  # the same file, new weights beside it
    tensorrt_engine.build_engine(model, cache_dir=tmp_path / "cache")
    assert len(set(loaded)) == 2 and loaded[0] == loaded[1]


def test_timing_cache_is_shared_across_models_but_not_gpus():
    assert timing_cache_key("10.3.0", "Orin") == timing_cache_key("10.3.0", "Orin")
    assert timing_cache_key("10.3.0", "Orin") != timing_cache_key("10.3.0", "A100")
    assert timing_cache_key("10.3.0", "Orin") != timing_cache_key("10.2.0", "Orin")


def test_calibration_digest_follows_the_data():
    batches = [(torch.ones(2, 3),), (torch.zeros(2, 3),)]
    assert calibration_digest(batches) == calibration_digest([(torch.ones(2, 3),), (torch.zeros(2, 3),)])
    assert calibration_digest(batches) != calibration_digest(batches[::-1])
    assert calibration_digest(batches) != calibration_digest([(torch.ones(3, 2),), (torch.zeros(2, 3),)])


def test_unknown_precision():
    with pytest.raises(MeasurementError, match="unknown precision 'fp8'"):
        BuildOptions(precision="fp8")


# --- a real exported file ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """ResNet-20 for Fashion-MNIST, exported by runtime/onnx/export.py: (program, ONNX path, origins)."""
    torch.manual_seed(0)
    program = capture(resnet20().eval(), torch.randn(1, 1, 28, 28), name="resnet20").eval()
    path = export_onnx(program, tmp_path_factory.mktemp("onnx") / "resnet20.onnx").path
    return program, path, onnx_node_origins(path)


def test_export_keeps_provenance_and_stays_valid(resnet):
    program, path, origins = resnet
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    keys = {entry.key for node in model.graph.node for entry in node.metadata_props}
    assert "pkg.torch.onnx.name_scopes" in keys and not any("stack_trace" in key for key in keys)
    conv = next(origin for origin in origins if origin.op_type == "Conv")
    assert conv.scope == "stem.1" and conv.fx_name.startswith("_native_batch_norm_legit_no_training")
    assert any("FuseBatchNormIntoConv" in rule for rule in conv.rules)
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxRuntimeSession(path).run(x)[0], program(x).numpy(), rtol=1e-4, atol=1e-5)


def test_every_onnx_node_with_work_maps_to_program_nodes(resnet):
    program, _, origins = resnet
    mapping = map_to_program(origins, program)
    calls = {node.name: node for node in program.graph.nodes if node.op == "call_function"}
    convs = [origin.name for origin in origins if origin.op_type == "Conv"]
    assert len(convs) == 21
    for name in convs:  # a conv with its batch norm folded in: the conv node and the norm node
        conv, norm = mapping[name]
        assert "conv2d" in str(calls[conv].target) and "batch_norm" in str(calls[norm].target)
        assert calls[norm].args[0] is calls[conv]
    relus = [origin.name for origin in origins if origin.op_type == "Relu"]
    assert all(len(mapping[name]) == 1 and "relu" in str(calls[mapping[name][0]].target) for name in relus)
    assert len({mapping[name] for name in relus}) == len(relus) == 19  # no two ReLUs on one Program node
    covered = {node for nodes in mapping.values() for node in nodes}
    # only the head's pool+flatten, which the exporter rewrote as mean+reshape, stay unmapped: never guessed
    assert set(calls) - covered == {"adaptive_avg_pool2d", "flatten"}
    assert mapping["node_mean"] == () and mapping["node_view"] == ()


class SharedRelu(nn.Module):
    """One ReLU module called twice, in place, like torchvision's BasicBlock: the exporter sees relu_1 and
    relu_2 where the Program has relu_ and relu__1 in the same module scope."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def test_same_operator_twice_in_one_scope_maps_in_order(tmp_path):
    program = capture(SharedRelu().eval(), torch.randn(1, 3, 8, 8)).eval()
    origins = onnx_node_origins(export_onnx(program, tmp_path / "shared.onnx").path)
    mapping = map_to_program(origins, program)
    relus = [mapping[origin.name] for origin in origins if origin.op_type == "Relu"]
    program_relus = [node.name for node in program.graph.nodes if "relu" in str(node.target)]
    assert len(program_relus) == 2 and relus == [(program_relus[0],), (program_relus[1],)]
    convs = [mapping[origin.name] for origin in origins if origin.op_type == "Conv"]
    assert convs == [("conv2d",), ("conv2d_1",)]


# --- TensorRT layer names -> ONNX nodes ----------------------------------------------------------

ORDER = ["node_Conv_1", "node_relu", "node_Conv_2", "node_add", "node_relu_1", "node_mean", "node_Gemm_3"]


@pytest.mark.parametrize("layer, metadata, expected", [
    ("node_Conv_1 + node_relu", None, ["node_Conv_1", "node_relu"]),
    ("node_add", None, ["node_add"]),
    ("PWN(PWN(node_relu_1), node_add)", None, ["node_add", "node_relu_1"]),
    ("{ForeignNode[node_Conv_2...node_mean]}", None, ["node_Conv_2", "node_add", "node_relu_1", "node_mean"]),
    ("Reformatting CopyNode for Input Tensor 0 to node_Conv_2", None, ["node_Conv_2"]),
    ("__myl_MulAdd_myl0_3", "[ONNX Layer: node_add]\x1e[ONNX Layer: node_relu_1]", ["node_add", "node_relu_1"]),
    ("node_Gemm_3", "[ONNX Layer: something_else]", ["node_Gemm_3"]),  # unknown metadata: fall back to the name
    ("input_0 copy", None, []),
])
def test_layer_names_to_onnx_nodes(layer, metadata, expected):
    assert onnx_nodes_of_layer(layer, ORDER, metadata) == expected


def test_torchscript_names_give_module_scopes():
    assert _torchscript_scope("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert _torchscript_scope("/features/features.0/Conv") == "features.0"
    assert _torchscript_scope("/Flatten") == ""
    assert _torchscript_scope("node_conv2d") is None


def _inspector_json(layers: list[str], sparse: set[str]) -> str:
    """What IEngineInspector.get_engine_information(JSON) returns for these layers, detailed verbosity."""
    return json.dumps({"Bindings": ["input_0", "output_0"], "Layers": [
        {"Name": name, "LayerType": "CaskConvolution" if "Conv" in name else "PointWiseV2",
         "Inputs": [], "Outputs": [{"Name": "t", "Format/Datatype": "Half"}], "HasSparseWeights": int(name in sparse),
         "TacticName": ("sm80_xmma_fprop_sparse_conv_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize128x64x64"
                        if name in sparse else "sm80_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc"),
         "Metadata": "\x1e".join(f"[ONNX Layer: {part}]" for part in name.split(" + "))} for name in layers]})


def test_profile_maps_fused_layers_to_program_nodes_and_flags_sparse_kernels(resnet):
    program, path, origins = resnet
    names = [origin.name for origin in origins]
    stem, relu = names[0], names[1]
    layers = [f"{stem} + {relu}", "node_add", "node_mean", f"Reformatting CopyNode for Input Tensor 0 to {stem}"]
    times = {layers[0]: 0.3, layers[1]: 0.1, layers[2]: 0.05, layers[3]: 0.0}
    info = parse_engine_information(_inspector_json(layers, sparse={layers[0]}))
    assert info[0].ran_sparse and info[0].sparse_weights and info[0].precision == "FP16" and not info[1].ran_sparse
    profile = build_layer_profile(times, info, path, program, runs=20)
    rows = {row.layer: row for row in profile.rows}
    assert rows[layers[0]].program_nodes == ("conv2d", "batch_norm", "relu")
    assert rows[layers[0]].onnx_nodes == (stem, relu) and rows[layers[0]].scopes == ("stem.1",)  # ReLU: top level
    assert rows["node_add"].program_nodes == ("add",) and rows["node_mean"].program_nodes == ()
    assert [row.ran_sparse for row in profile.rows] == [True, False, False, False]
    assert [row.reformat for row in profile.rows] == [False, False, False, True]
    assert profile.total_ms == pytest.approx(0.45) and rows["node_add"].share == pytest.approx(0.1 / 0.45)
    table = format_profile_table(profile)
    assert table.splitlines()[1].startswith(stem) and "conv2d, batch_norm, relu" in table
    assert "4 layers" in table and "1 ran sparse" in table and "reformat for conv2d, batch_norm" in table
    without_program = build_layer_profile(times, info, path, None)
    assert all(row.program_nodes == () for row in without_program.rows)
    assert without_program.rows[0].scopes == ("stem.1",)  # module scopes still come from the file


def test_names_only_engine_information():
    layers = parse_engine_information({"Layers": ["node_add", "node_relu"], "Bindings": []})
    assert [layer.name for layer in layers] == ["node_add", "node_relu"]
    assert not any(layer.ran_sparse for layer in layers)


def test_layer_precision_is_read_from_tensorrt_10_and_11_inspector_json():
    """TensorRT 11's inspector split the output's "Format/Datatype" field (its 10.x-to-11.x migration guide)."""
    ten = {"Name": "a", "Outputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]}
    eleven = {"Name": "b", "Outputs": [{"DataType": "Half", "Format": "Channel major FP16 format (kHWC8)"}]}
    int8 = {"Name": "c", "Outputs": [{"DataType": "Int8", "Format": "Row major linear INT8 format (kLINEAR)"}]}
    layers = parse_engine_information({"Layers": [ten, eleven, int8], "I/O Tensors": []})
    assert [layer.precision for layer in layers] == ["FP16", "FP16", "INT8"]


# --- without TensorRT ----------------------------------------------------------------------------

@pytest.fixture
def without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)


def test_building_without_tensorrt_says_how_to_install(without_tensorrt, resnet):
    from prunefx.runtime import build_engine, compile_torch_tensorrt

    with pytest.raises(BackendUnavailableError, match=r"`tensorrt` Python package.*pip install tensorrt.*JetPack"):
        build_engine(resnet[1])
    with pytest.raises(BackendUnavailableError, match=r"`torch_tensorrt`.*pip install torch-tensorrt"):
        compile_torch_tensorrt(resnet[0])


@pytest.mark.parametrize("argv, missing", [
    (["bench", "--backend", "trt"], "pip install tensorrt"),
    (["profile", "--backend", "trt"], "pip install tensorrt"),
    (["bench", "--backend", "torch-trt"], "pip install torch-tensorrt"),
])
def test_cli_without_tensorrt(without_tensorrt, capsys, tmp_path, argv, missing):
    code = main([argv[0], str(tmp_path / "never-read.onnx"), *argv[1:]])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"prunefx {argv[0]}: error: " in err and missing in err


# --- with TensorRT and a GPU ---------------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_tensorrt
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_engine_matches_onnx_runtime_and_is_cached(resnet, tmp_path, precision, tolerance):
    from prunefx.runtime import build_engine, measure_gpu_latency

    program, path, _ = resnet
    engine = build_engine(path, BuildOptions(precision=precision), cache_dir=tmp_path)
    assert not engine.cached and len(list(tmp_path.glob("*.engine"))) == 1 and list(tmp_path.glob("timing-*.cache"))
    x = torch.randn(1, 1, 28, 28)
    want = OnnxRuntimeSession(path).run(x)[0]
    got = engine.run(x.cuda())[0].float().numpy()
    assert np.abs(got - want).max() <= tolerance * np.abs(want).max()
    again = build_engine(path, BuildOptions(precision=precision), cache_dir=tmp_path)
    assert again.cached and len(list(tmp_path.glob("*.engine"))) == 1
    stats = measure_gpu_latency(engine.time_once, warmup=5, runs=20)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms


@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_tensorrt
def test_real_engine_profile_maps_layers_to_program_nodes(resnet, tmp_path):
    from prunefx.runtime import build_engine, profile_engine

    program, path, _ = resnet
    engine = build_engine(path, BuildOptions(precision="fp16", sparse=True), cache_dir=tmp_path)
    times = profile_engine(engine, warmup=2, runs=10)
    assert times.runs == 10
    profile = build_layer_profile(times.medians(), parse_engine_information(engine.engine_information()), path,
                                  program, runs=times.runs)
    mapped = {node for row in profile.rows for node in row.program_nodes}
    convs = {node.name for node in program.graph.nodes if "conv2d" in str(node.target)}
    assert convs <= mapped  # every convolution is accounted for by some engine layer
    assert profile.total_ms > 0 and all(row.median_ms >= 0 for row in profile.rows)


# --- precision plans: strongly typed on TensorRT >= 10, weak flags only behind the version check ----------

FLOAT32_FILE, FLOAT16_FILE, QDQ_FILE = OnnxTypes(False, False), OnnxTypes(False, True), OnnxTypes(True, False)


@pytest.mark.parametrize("version, precision, types, strongly_typed, flags, lower", [
    ("10.3.0", "fp32", FLOAT32_FILE, True, (), False),
    ("10.3.0", "int8", QDQ_FILE, False, ("FP16", "INT8"), False),  # as 8.6 and as a budget at fp16 on 10
    ("10.3.0", "fp16", FLOAT16_FILE, True, (), False),
    ("10.3.0", "fp16", FLOAT32_FILE, False, ("FP16",), False),   # TensorRT 10's weakly typed FP16, kept
    ("11.0.0", "fp32", FLOAT32_FILE, True, (), False),
    ("11.0.0", "int8", QDQ_FILE, True, (), False),
    ("11.2.1", "fp16", FLOAT32_FILE, True, (), True),            # no FP16 flag in 11: lower the file
    ("8.6.1", "fp16", FLOAT32_FILE, False, ("FP16",), False),
    ("8.6.1", "int8", QDQ_FILE, False, ("FP16", "INT8"), False),
    # an INT8 candidate of a budget: its Q/DQ layers in INT8, the others at the dense model's precision
    ("8.6.1", "fp32", QDQ_FILE, False, ("INT8",), False),
    ("8.6.1", "fp16", QDQ_FILE, False, ("FP16", "INT8"), False),
    ("10.3.0", "fp32", QDQ_FILE, True, (), False),
    ("10.3.0", "fp16", QDQ_FILE, False, ("FP16", "INT8"), False),
    ("11.0.0", "fp32", QDQ_FILE, True, (), False),
])
def test_network_plan(version, precision, types, strongly_typed, flags, lower):
    plan = network_plan(version, precision, types)
    assert plan == NetworkPlan(strongly_typed=strongly_typed, builder_flags=flags, lower_to_fp16=lower)
    assert network_plan(version, precision, types, sparse=True).builder_flags == flags + ("SPARSE_WEIGHTS",)


def test_tensorrt_11_refuses_a_qdq_file_at_fp16_and_a_budget_leaves_its_int8_mixes_unmeasured(monkeypatch):
    """TensorRT 11 has no FP16 flag and the FP16 lowering keeps Q/DQ files out: the candidate's float layers would
    run FP32 beside a dense model lowered to FP16. Refused, and the pair says so before any INT8 candidate."""
    from prunefx.runtime.backends import Settings
    from prunefx.runtime.backends.trt import TensorRTBackend
    with pytest.raises(MeasurementError, match="not measured like for like at fp16"):
        network_plan("11.0.0", "fp16", QDQ_FILE)
    for version, precision, refused in (("11.0.0", "fp16", True), ("11.0.0", "fp32", False),
                                        ("10.3.0", "fp16", False)):
        monkeypatch.setattr(TensorRTBackend, "software_version", lambda self, settings, v=version: v)
        refusal = TensorRTBackend().int8_refusal_at(Settings(precision=precision))
        assert (refusal is not None) == refused, (version, precision)


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.0.0"])
def test_int8_needs_qdq_nodes_on_every_version(version):
    with pytest.raises(MeasurementError, match="INT8 comes only from QuantizeLinear/DequantizeLinear"):
        network_plan(version, "int8", FLOAT32_FILE)
    with pytest.raises(MeasurementError, match="TensorRT major version"):
        network_plan("unknown", "fp32", FLOAT32_FILE)


def _fake_tensorrt(version: str, *, explicit_batch: bool, strongly_typed: bool, weak_flags: bool,
                   engine: bytes = b"engine"):
    """A stand-in `tensorrt` module with the members that version documents, recording what is called."""
    creation = {"EXPLICIT_BATCH": 0} if explicit_batch else {}
    if strongly_typed:
        creation["STRONGLY_TYPED"] = 1 if explicit_batch else 0
    flags = {"SPARSE_WEIGHTS": "SPARSE_WEIGHTS", **({"FP16": "FP16", "INT8": "INT8"} if weak_flags else {})}
    calls = {"network_flags": [], "set_flag": []}

    class Config:
        profiling_verbosity = None

        def set_flag(self, flag):
            calls["set_flag"].append(flag)

        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = size

        def create_timing_cache(self, data):
            return data

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"timings")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"].append(flags)
            return types.SimpleNamespace(num_inputs=0)  # fixed shapes: no optimization profile

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            return engine

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return True

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    module = types.ModuleType("tensorrt")  # a module, as the real one: hashable (the logger cache keys on it)
    module.__dict__.update(
        __version__=version, NetworkDefinitionCreationFlag=types.SimpleNamespace(**creation),
        BuilderFlag=types.SimpleNamespace(**flags), Builder=Builder, OnnxParser=Parser, Logger=Logger,
        ProfilingVerbosity=types.SimpleNamespace(DETAILED="detailed"),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"))
    return module, calls


@pytest.mark.parametrize("version, members, precision, types_, network_flags, builder_flags", [
    ("8.6.1", dict(explicit_batch=True, strongly_typed=False, weak_flags=True), "fp16", FLOAT32_FILE, 1, ["FP16"]),
    ("10.3.0", dict(explicit_batch=True, strongly_typed=True, weak_flags=True), "int8", QDQ_FILE, 0,
     ["FP16", "INT8"]),
    ("10.3.0", dict(explicit_batch=True, strongly_typed=True, weak_flags=True), "fp32", QDQ_FILE, 1 << 1, []),
    ("10.3.0", dict(explicit_batch=True, strongly_typed=True, weak_flags=True), "fp16", FLOAT32_FILE, 0, ["FP16"]),
    # TensorRT 11: no EXPLICIT_BATCH, no FP16/INT8 flags; STRONGLY_TYPED accepted (ignored), or gone later
    ("11.0.0", dict(explicit_batch=False, strongly_typed=True, weak_flags=False), "int8", QDQ_FILE, 1, []),
    ("12.0.0", dict(explicit_batch=False, strongly_typed=False, weak_flags=False), "fp32", FLOAT32_FILE, 0, []),
])
def test_build_sets_only_the_flags_the_version_has(tmp_path, version, members, precision, types_, network_flags,
                                                   builder_flags):
    trt, calls = _fake_tensorrt(version, **members)
    options = BuildOptions(precision=precision, workspace_mib=64)
    plan = network_plan(version, precision, types_)
    assert network_creation_flags(trt, plan) == network_flags
    serialized = _build(trt, tmp_path / "m.onnx", options, plan, tmp_path / "timing.cache")
    assert serialized == b"engine" and (tmp_path / "timing.cache").read_bytes() == b"timings"
    assert calls["network_flags"] == [network_flags] and calls["set_flag"] == builder_flags
    assert calls["pool"] == 64 << 20 and calls["parsed"] == str(tmp_path / "m.onnx")


def test_an_engine_cut_short_by_a_full_disk_is_never_cached(tmp_path, monkeypatch, file_size_limit):
    """The cache is trusted by a file's name: a write that fails half-way must leave no engine under it, or
    every later run would load the truncated file. The next build, with room, caches the whole engine."""
    serialized = bytes(range(256)) * 256  # 64 KiB
    trt, _ = _fake_tensorrt("10.3.0", explicit_batch=True, strongly_typed=True, weak_flags=True, engine=serialized)
    loaded = []
    monkeypatch.setattr(tensorrt_engine, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_engine, "require_cuda", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "fake GPU")
    monkeypatch.setattr(tensorrt_engine.Engine, "load", lambda path, *_, **__: loaded.append(path.read_bytes()))
    relu = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([relu], "relu", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "relu.onnx")
    cache = tmp_path / "cache"
    with file_size_limit(len(serialized) // 4), pytest.raises(OSError):
        tensorrt_engine.build_engine(tmp_path / "relu.onnx", cache_dir=cache)
    assert not list(cache.glob("*.engine")) and not list(cache.glob(".*"))  # no engine, no leftover part
    tensorrt_engine.build_engine(tmp_path / "relu.onnx", cache_dir=cache)
    assert loaded == [serialized] and len(list(cache.glob("*.engine"))) == 1


def test_a_cached_engine_tensorrt_cannot_load_is_built_again(tmp_path, monkeypatch, caplog):
    """The key names the TensorRT version and the GPU, so a cached engine that does not load was damaged after
    it was written: it is removed and built again, not refused by every later build of that key."""
    serialized = b"engine bytes"
    trt, _ = _fake_tensorrt("10.3.0", explicit_batch=True, strongly_typed=True, weak_flags=True, engine=serialized)
    loaded = []

    def load(path, *_, **__):
        if path.read_bytes() != serialized:  # as TensorRT answers a file it cannot deserialize
            raise DeviceToolError(f"TensorRT could not load the engine {path}")
        loaded.append(path.name)
        return path.name

    monkeypatch.setattr(tensorrt_engine, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_engine, "require_cuda", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "fake GPU")
    monkeypatch.setattr(tensorrt_engine.Engine, "load", load)
    relu = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([relu], "relu", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "relu.onnx")
    cache = tmp_path / "cache"
    tensorrt_engine.build_engine(tmp_path / "relu.onnx", cache_dir=cache)
    (engine_file,) = cache.glob("*.engine")
    engine_file.write_bytes(serialized[:5])  # damaged in the cache
    for _ in range(2):  # built again, then read from the cache
        tensorrt_engine.build_engine(tmp_path / "relu.onnx", cache_dir=cache)
    assert loaded == [engine_file.name] * 3 and engine_file.read_bytes() == serialized
    assert "did not load" in caplog.text


def test_onnx_types_reads_qdq_and_float16(resnet, tmp_path):
    assert onnx_types(resnet[1]) == FLOAT32_FILE
    model = onnx.load(str(resnet[1]))
    model.graph.node[0].op_type = "DequantizeLinear"  # only the operator types are read
    onnx.save(model, tmp_path / "qdq.onnx")
    assert onnx_types(tmp_path / "qdq.onnx").has_qdq
    cast = onnx.helper.make_node("Cast", ["output_0"], ["half"], to=onnx.TensorProto.FLOAT16)
    model = onnx.load(str(resnet[1]))
    model.graph.node.append(cast)
    onnx.save(model, tmp_path / "half.onnx")
    assert onnx_types(tmp_path / "half.onnx") == FLOAT16_FILE


def test_int8_from_calibration_data_quantizes_what_tensorrt_parses_and_keeps_biases_float(tmp_path):
    """TensorRT's ONNX parser dequantizes INT8 (and FP8, INT4) only: an INT32 bias behind a DequantizeLinear, ONNX
    Runtime's default, would fail every calibrated INT8 build at the first convolution."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    path = export_onnx(capture(model, torch.randn(1, 3, 8, 8)), tmp_path / "fp32.onnx").path
    batches = [(torch.randn(1, 3, 8, 8),) for _ in range(2)]
    source = tensorrt_engine._explicit_source(path, BuildOptions(precision="int8"), FLOAT32_FILE, batches,
                                              tmp_path / "key")
    graph = onnx.load(str(source)).graph
    initializers = {tensor.name: tensor.data_type for tensor in graph.initializer}
    made_by = {output: node for node in graph.node for output in node.output}
    dequantized = [initializers[node.input[0]] for node in graph.node
                   if node.op_type == "DequantizeLinear" and node.input[0] in initializers]
    assert dequantized and set(dequantized) == {onnx.TensorProto.INT8}
    biases = [node.input[2] for node in graph.node if node.op_type in ("Conv", "Gemm") and len(node.input) > 2]
    assert len(biases) == 2 and all(initializers.get(bias) == onnx.TensorProto.FLOAT for bias in biases), \
        [made_by[bias].op_type for bias in biases if bias in made_by]


@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_tensorrt
def test_int8_engine_from_a_qdq_file_matches_onnx_runtime(resnet, tmp_path):
    from prunefx.passes.quantize_int8 import quantize_int8
    from prunefx.runtime import build_engine
    from prunefx.runtime.onnx.quantized import export_quantized_onnx

    program = resnet[0].clone()
    quantize_int8(program, config={"calibration": [torch.randn(1, 1, 28, 28) for _ in range(4)]})
    path = export_quantized_onnx(program, tmp_path / "int8.onnx", activations="s8").path
    engine = build_engine(path, BuildOptions(precision="int8"), cache_dir=tmp_path)  # strongly typed on >= 10
    x = torch.randn(1, 1, 28, 28)
    want = OnnxRuntimeSession(path).run(x)[0]
    got = engine.run(x.cuda())[0].float().numpy()
    assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()  # INT8 kernels on both sides, own rounding
    with pytest.raises(MeasurementError, match="INT8 comes only from"):
        build_engine(resnet[1], BuildOptions(precision="int8"), cache_dir=tmp_path)


class CastsToFloat(nn.Module):
    """A model that names float32 in its graph: an explicit `.float()` (with torch.export's dtype check) and a
    float32 factory, as many models do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x).float()
        return y + torch.arange(y.shape[-1], dtype=torch.float32)


def test_torch_tensorrt_prepares_an_fp16_model_that_exports_where_its_graph_names_float32():
    """compile_torch_tensorrt's preparation (here on the CPU): Module.to left the graph's float32 cast checks,
    and torch.export of the half model failed before Torch-TensorRT saw it."""
    from prunefx.runtime.tensorrt.torch_compiled import placed
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    program = capture(CastsToFloat().eval(), x).eval()
    module, example = placed(program, "fp16", "cpu")
    assert example[0].dtype == torch.float16
    exported = torch.export.export(module, example)
    out = exported.module()(*example)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), program(x), rtol=1e-2, atol=1e-2)
    assert program.module.conv.weight.dtype == torch.float32  # the Program itself is left as it was


def _dynamic_batch_file(path):
    torch.onnx.export(nn.Conv2d(3, 8, 3), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=18,
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    return path


def test_a_file_of_dynamic_batch_is_built_and_bound_at_the_batch_timed(resnet, tmp_path):
    """Without an optimization profile TensorRT builds no engine of a file with dynamic inputs: one at exactly the
    shapes timed, the engine's context bound to them, so that its buffers have the outputs' shapes."""
    path = _dynamic_batch_file(tmp_path / "dynamic.onnx")
    shapes = dynamic_input_shapes(path, [torch.randn(32, 3, 8, 8)])
    assert shapes == (("images", (32, 3, 8, 8)),)
    assert dynamic_input_shapes(resnet[1], [torch.randn(1, 1, 28, 28)]) == ()  # fixed shapes: no profile

    made = []
    builder = types.SimpleNamespace(create_optimization_profile=lambda: types.SimpleNamespace(
        set_shape=lambda name, *sizes: made.append((name, sizes))))
    images = types.SimpleNamespace(name="images", shape=(-1, 3, 8, 8))
    network = types.SimpleNamespace(num_inputs=1, get_input=lambda index: images)
    config = types.SimpleNamespace(add_optimization_profile=lambda profile: made.append("added"))
    tensorrt_engine._add_profile(None, builder, network, config, BuildOptions(input_shapes=shapes), path)
    assert made == [("images", ((32, 3, 8, 8),) * 3), "added"]
    with pytest.raises(DeviceToolError, match="input images has dynamic dimensions and no shape"):
        tensorrt_engine._add_profile(None, builder, network, config, BuildOptions(), path)

    engine = tensorrt_engine.Engine.__new__(tensorrt_engine.Engine)
    bound = {}
    engine.path, engine.options = path, BuildOptions(input_shapes=shapes)
    engine.engine = types.SimpleNamespace(num_io_tensors=2, get_tensor_name=["images", "output"].__getitem__)
    engine.context = types.SimpleNamespace(
        set_input_shape=lambda name, shape: bound.__setitem__(name, shape) or True,  # TensorRT's: whether it took it
        get_tensor_shape=lambda name: bound.get(name, (bound["images"][0], 8, 6, 6) if bound else (-1, 8, 6, 6)))
    assert engine._bound_shapes() == {"images": (32, 3, 8, 8), "output": (32, 8, 6, 6)}
    engine.options, bound = BuildOptions(), {}
    with pytest.raises(DeviceToolError, match="tensor images has a dynamic shape"):
        engine._bound_shapes()
    # a shape outside the profile is refused by TensorRT's return value, not later as a dynamic shape
    engine.options, engine.context.set_input_shape = BuildOptions(input_shapes=shapes), lambda name, shape: False
    with pytest.raises(DeviceToolError, match=r"input images cannot take shape \(32, 3, 8, 8\): outside the engine's"):
        engine._bound_shapes()


def test_an_engine_s_fp8_and_half_buffers_are_filled_with_random_values_torch_cannot_draw_in_fp8():
    """torch has no normal_ kernel for float8: an engine with FP8 inputs or outputs failed while binding them."""
    for dtype in (torch.float8_e4m3fn, torch.float16, torch.float32):
        buffer = tensorrt_engine._random_filled(torch.empty(64, dtype=dtype))
        values = buffer.float()
        assert buffer.dtype is dtype and values.std() > 0.5 and torch.isfinite(values).all()


def test_engine_buffers_take_torch_s_type_for_every_tensorrt_type_it_has_and_refuse_the_rest(tmp_path):
    """trt.nptype knows no bfloat16 nor fp8: an engine with such inputs or outputs stopped with a TypeError."""
    members = ("FLOAT", "HALF", "BF16", "FP8", "INT8", "UINT8", "INT32", "INT64", "BOOL", "INT4", "FP4")
    trt = types.SimpleNamespace(DataType=types.SimpleNamespace(**{name: f"DataType.{name}" for name in members}))
    expected = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "FP8": torch.float8_e4m3fn,
                "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
                "BOOL": torch.bool}
    for name, dtype in expected.items():
        assert tensorrt_engine.torch_dtype(trt, f"DataType.{name}", "x", tmp_path) is dtype
    with pytest.raises(DeviceToolError, match="tensor x is of TensorRT type DataType.INT4"):
        tensorrt_engine.torch_dtype(trt, "DataType.INT4", "x", tmp_path)


def test_the_engine_cache_keeps_the_engines_used_last_within_its_limit(tmp_path):
    # every candidate of a budget search left a full engine (and an fp16 copy of its file) in the cache for good
    import os

    from prunefx.runtime.tensorrt.engine_cache import trim_engine_cache

    keys = [f"{index:064x}" for index in range(4)]
    for age, key in enumerate(reversed(keys)):  # keys[0] used last, keys[3] first
        for suffix in (".engine", ".json", ".fp16.onnx"):
            (tmp_path / f"{key}{suffix}").write_bytes(b"x" * 100)
            os.utime(tmp_path / f"{key}{suffix}", (1000 + age, 1000 + age))
    timing = tmp_path / f"timing-{'f' * 64}.cache"
    timing.write_bytes(b"x" * 1000)
    removed = trim_engine_cache(tmp_path, keep=keys[3], limit=700)  # room for two engines of 300 bytes
    assert removed == [keys[2], keys[1]]  # the least recent after the one just built, which stays
    assert sorted({path.name[:64] for path in tmp_path.glob("*.engine")}) == sorted([keys[0], keys[3]])
    assert timing.exists() and not list(tmp_path.glob(f"{keys[1]}*"))
