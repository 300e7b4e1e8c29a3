"""runtime/tensorrt/trtexec_command.py and runtime/tensorrt/jetson.py: trtexec command lines, its performance summary and per-layer
profile, Jetson power mode / clocks / tegrastats parsing, and the whole trtexec flow (bench and profile
from the CLI) against stand-in programs that print what the real ones print. No TensorRT needed."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import textwrap

import pytest
import torch

from prunefx.cli import EXIT_USER_ERROR, main
from prunefx.runtime import BackendUnavailableError, DeviceToolError, MeasurementError
from prunefx.runtime.tensorrt import trtexec_command as trtexec_module
from prunefx.runtime.tensorrt.jetson import (
    TegrastatsSampler,
    parse_jetson_clocks,
    parse_nvpmodel,
    parse_tegrastats_line,
)
from prunefx.runtime.tensorrt.plan import OnnxTypes, onnx_types
from prunefx.runtime.tensorrt.trtexec_command import (
    TrtexecOptions,
    build_arguments,
    find_trtexec,
    run_trtexec,
    timing_arguments,
    trtexec_version,
)
from prunefx.runtime.tensorrt.trtexec_output import parse_performance_summary, parse_trtexec_profile

torch.set_num_threads(1)

# The end of `trtexec --onnx=model.onnx --fp16` on a Jetson Orin Nano, TensorRT 10.3 (JetPack 6.1).
TRTEXEC_10 = textwrap.dedent("""\
    &&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --onnx=model.onnx --fp16
    [10/14/2024-09:12:40] [I] === Model Options ===
    [10/14/2024-09:12:40] [I] Format: ONNX
    [10/14/2024-09:12:58] [I] Engine built in 17.8311 sec.
    [10/14/2024-09:13:01] [I] Warmup completed 412 queries over 500 ms
    [10/14/2024-09:13:01] [I] Timing trace has 2439 queries over 3.00215 s
    [10/14/2024-09:13:01] [I] Average on 10 runs - GPU latency: 1.20361 ms - Host latency: 1.2637 ms (enqueue 0.395313 ms)
    [10/14/2024-09:13:01] [I]
    [10/14/2024-09:13:01] [I] === Performance summary ===
    [10/14/2024-09:13:01] [I] Throughput: 812.418 qps
    [10/14/2024-09:13:01] [I] Latency: min = 1.19434 ms, max = 2.0188 ms, mean = 1.23152 ms, median = 1.22144 ms, percentile(90%) = 1.25537 ms, percentile(95%) = 1.27295 ms, percentile(99%) = 1.46216 ms
    [10/14/2024-09:13:01] [I] Enqueue Time: min = 0.341309 ms, max = 0.88623 ms, mean = 0.401514 ms, median = 0.392578 ms, percentile(90%) = 0.437256 ms, percentile(95%) = 0.458008 ms, percentile(99%) = 0.62207 ms
    [10/14/2024-09:13:01] [I] H2D Latency: min = 0.0200195 ms, max = 0.0385742 ms, mean = 0.0216748 ms, median = 0.0214844 ms, percentile(90%) = 0.0227051 ms, percentile(95%) = 0.0231934 ms, percentile(99%) = 0.0288086 ms
    [10/14/2024-09:13:01] [I] GPU Compute Time: min = 1.13672 ms, max = 1.95728 ms, mean = 1.17217 ms, median = 1.16162 ms, percentile(90%) = 1.19507 ms, percentile(95%) = 1.21143 ms, percentile(99%) = 1.39893 ms
    [10/14/2024-09:13:01] [I] D2H Latency: min = 0.0341797 ms, max = 0.0498047 ms, mean = 0.037605 ms, median = 0.0371094 ms, percentile(90%) = 0.0393066 ms, percentile(95%) = 0.0402832 ms, percentile(99%) = 0.0446777 ms
    [10/14/2024-09:13:01] [I] Total Host Walltime: 3.00215 s
    [10/14/2024-09:13:01] [I] Total GPU Compute Time: 2.85894 s
    [10/14/2024-09:13:01] [W] * GPU compute time is unstable, with coefficient of variance = 4.21385%.
    [10/14/2024-09:13:01] [W]   If not already in use, locking GPU clock frequency or adding --useSpinWait may improve the stability.
    [10/14/2024-09:13:01] [I] Explanations of the performance metrics are printed in the verbose logs.
    [10/14/2024-09:13:01] [I]
    &&&& PASSED TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --onnx=model.onnx --fp16
    """)

# TensorRT 8.2 (JetPack 4.6) prints the 99th percentile only, and an End-to-End Host Latency line.
TRTEXEC_8 = textwrap.dedent("""\
    [05/29/2022-21:55:54] [I] === Performance summary ===
    [05/29/2022-21:55:54] [I] Throughput: 28.9757 qps
    [05/29/2022-21:55:54] [I] Latency: min = 34.6697 ms, max = 36.1511 ms, mean = 35.0057 ms, median = 34.916 ms, percentile(99%) = 36.1511 ms
    [05/29/2022-21:55:54] [I] End-to-End Host Latency: min = 34.6746 ms, max = 36.156 ms, mean = 35.0105 ms, median = 34.9216 ms, percentile(99%) = 36.156 ms
    [05/29/2022-21:55:54] [I] GPU Compute Time: min = 33.4643 ms, max = 34.8665 ms, mean = 33.664 ms, median = 33.5995 ms, percentile(99%) = 34.8665 ms
    [05/29/2022-21:55:54] [I] Total Host Walltime: 3.07153 s
    [05/29/2022-21:55:54] [I] Explanations of the performance metrics are printed in the verbose logs.
    &&&& PASSED TensorRT.trtexec [TensorRT v8201] # trtexec --onnx=model.onnx
    """)

TEGRASTATS = {
    # Orin Nano / NX, JetPack 6: board input VDD_IN, in mW
    "orin-nano": ("10-08-2026 04:35:02 RAM 6712/7620MB (lfb 12x4MB) SWAP 369/3810MB (cached 8MB) "
                  "CPU [38%@1497,2%@729,1%@729,0%@729,1%@729,0%@729] EMC_FREQ 61%@2133 GR3D_FREQ 99%@[612] "
                  "NVDEC off NVJPG off VIC off OFA off APE 200 cpu@57.125C soc2@55.093C gpu@58.2C tj@58.5C "
                  "VDD_IN 9120mW/8535mW VDD_CPU_GPU_CV 3904mW/1944mW VDD_SOC 2720mW/3659mW", 9120, "VDD_IN", 99),
    # AGX Orin, JetPack 6: no input rail; total = VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0
    "agx-orin": ("04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) "
                 "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 45%@[0,0] "
                 "VIC_FREQ 729 APE 174 CPU@44.562C Tboard@32C GPU@-256C tj@44.343C VDD_GPU_SOC 2340mW/2340mW "
                 "VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW",
                 2340 + 390 + 4025, "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0", 45),
    # Xavier NX, JetPack 5.1: VDD_IN with units
    "xavier-nx": ("07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) "
                  "CPU [23%@1397,17%@1192,16%@1190,13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 GR3D_FREQ 0%@[114] "
                  "VIC_FREQ 115 APE 150 AUX@45C CPU@46.5C AO@45C GPU@45.5C PMIC@50C VDD_IN 2763mW/2846mW "
                  "VDD_CPU_GPU_CV 650mW/670mW VDD_SOC 650mW/711mW", 2763, "VDD_IN", 0),
    # Jetson Nano, JetPack 4.6: POM_5V_IN without units
    "nano": ("RAM 1923/3964MB (lfb 2x2MB) SWAP 191/1982MB (cached 6MB) IRAM 0/252kB(lfb 252kB) "
             "CPU [5%@1224,4%@1224,3%@1224,6%@1224] EMC_FREQ 0%@1600 GR3D_FREQ 12%@76 APE 25 PLL@37C CPU@40C "
             "PMIC@50C GPU@40C AO@45C thermal@40C POM_5V_IN 1750/1628 POM_5V_GPU 0/0 POM_5V_CPU 366/406",
             1750, "POM_5V_IN", 12),
}

NVPMODEL = "NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2\n"
JETSON_CLOCKS_PINNED = textwrap.dedent("""\
    SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
    Online CPUs: 0-1
    cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
    cpu1: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
    cpu2: Online=0 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=729600 IdleStates: WFI=1 c7=1
    GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
    EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
    Fan: PWM=255
    NV Power Mode: MAXN
    """)


# --- command lines -------------------------------------------------------------------------------

def test_default_arguments_build_once_and_time_the_engine_with_percentiles():
    build = build_arguments("m.onnx", engine_path="m.engine")
    assert build[:4] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--skipInference"]
    assert "--sparsity=disable" in build and not any(a.startswith(("--warmUp", "--iterations", "--shapes")) for a in build)
    timing = timing_arguments("m.engine")
    assert timing[:2] == ["trtexec", "--loadEngine=m.engine"]
    assert {"--warmUp=500", "--iterations=200", "--duration=3", "--percentile=90,95,99", "--noDataTransfers"} <= set(timing)
    assert not any(a.startswith(("--onnx", "--fp16", "--int8", "--exportProfile", "--useDLACore")) for a in timing)


@pytest.mark.parametrize("version, default, graphs_with_transfers", [
    ("10.3.0", ["--noDataTransfers"], ["--useCudaGraph"]),
    ("8.6.1", ["--noDataTransfers"], ["--useCudaGraph"]),
    # 11 turned both defaults round: CUDA graphs on, transfers off (its help marks the old flags no-ops)
    ("11.1.0", ["--noCudaGraph"], ["--includeDataTransfers"]),
])
def test_cuda_graphs_and_data_transfers_are_what_was_asked_on_every_version(version, default, graphs_with_transfers):
    switches = ("--noDataTransfers", "--useCudaGraph", "--noCudaGraph", "--includeDataTransfers")

    def asked(**options):
        return [a for a in timing_arguments("e", TrtexecOptions(**options), tensorrt_version=version) if a in switches]

    assert asked() == default
    assert asked(use_cuda_graph=True, no_data_transfers=False) == graphs_with_transfers


def test_a_file_with_dynamic_inputs_is_built_and_timed_at_the_shapes_given():
    options = TrtexecOptions(input_shapes=(("images", (32, 3, 224, 224)), ("scale:0", (32, 2))))
    shapes = "--shapes='images':32x3x224x224,'scale:0':32x2"  # quoted: a name may hold trtexec's ':' or ','
    assert shapes in build_arguments("m.onnx", options, engine_path="e")
    assert shapes in timing_arguments("e", options)


FLOAT32, FLOAT16, QDQ = OnnxTypes(False, False), OnnxTypes(False, True), OnnxTypes(True, False)


@pytest.mark.parametrize("version, precision, types, flags", [
    ("10.3.0", "fp32", FLOAT32, ["--stronglyTyped"]),
    ("10.3.0", "int8", QDQ, ["--fp16", "--int8"]),          # Q/DQ layers INT8, the others FP16, as on 8.6
    ("10.3.0", "fp32", QDQ, ["--stronglyTyped"]),           # beside an FP32 dense model: the others FP32
    ("10.3.0", "fp16", FLOAT16, ["--stronglyTyped"]),
    ("10.3.0", "fp16", FLOAT32, ["--fp16"]),               # TensorRT 10's weakly typed FP16, version-checked
    ("11.0.0", "fp32", FLOAT32, []),                       # always strongly typed: nothing to pass
    ("11.0.0", "int8", QDQ, []),
    ("11.1.0", "fp16", FLOAT16, []),
    ("8.6.1", "fp16", FLOAT32, ["--fp16"]),
    ("8.6.1", "int8", QDQ, ["--fp16", "--int8"]),
])
def test_precision_flags(version, precision, types, flags):
    args = build_arguments("m.onnx", TrtexecOptions(precision=precision), engine_path="e", tensorrt_version=version,
                           types=types)
    assert [a for a in args if a in ("--fp16", "--int8", "--stronglyTyped", "--best")] == flags
    assert not any(a.startswith("--calib") for a in args)  # no implicit calibration, no placeholder ranges


def test_int8_without_qdq_and_fp16_flag_on_tensorrt_11_are_refused():
    with pytest.raises(MeasurementError, match="INT8 comes only from QuantizeLinear/DequantizeLinear"):
        build_arguments("m.onnx", TrtexecOptions(precision="int8"), engine_path="e", tensorrt_version="10.3.0",
                        types=FLOAT32)
    with pytest.raises(MeasurementError, match="TensorRT >= 11 has no --fp16.*lower"):
        build_arguments("m.onnx", TrtexecOptions(precision="fp16"), engine_path="e", tensorrt_version="11.0.0",
                        types=FLOAT32)


def test_sparse_profile_engine_and_dla_arguments(tmp_path):
    options = TrtexecOptions(precision="fp16", sparse=True, iterations=50, warmup_ms=100, duration_s=0,
                             use_cuda_graph=True, no_data_transfers=False, dla_core=1)
    build = build_arguments(tmp_path / "m.onnx", options, executable="/opt/trt/trtexec", engine_path=tmp_path / "e",
                            timing_cache=tmp_path / "t.cache", detailed=True)
    timing = timing_arguments(tmp_path / "e", options, executable="/opt/trt/trtexec",
                              profile_path=tmp_path / "p.json", layer_info_path=tmp_path / "l.json")
    assert build[0] == timing[0] == "/opt/trt/trtexec"
    for flag in ("--sparsity=enable", "--useDLACore=1", "--allowGPUFallback", f"--saveEngine={tmp_path / 'e'}",
                 f"--timingCacheFile={tmp_path / 't.cache'}", "--profilingVerbosity=detailed"):
        assert flag in build, flag
    for flag in ("--iterations=50", "--warmUp=100", "--duration=0", "--useCudaGraph", "--useDLACore=1",
                 "--profilingVerbosity=detailed", "--separateProfileRun", "--dumpProfile",
                 f"--exportProfile={tmp_path / 'p.json'}", f"--exportLayerInfo={tmp_path / 'l.json'}"):
        assert flag in timing, flag
    assert "--noDataTransfers" not in timing


def test_bad_options_are_refused():
    with pytest.raises(MeasurementError, match="unknown precision 'int4'"):
        TrtexecOptions(precision="int4")
    with pytest.raises(MeasurementError, match="iterations"):
        TrtexecOptions(iterations=0)


# --- parsing -------------------------------------------------------------------------------------

def test_summary_of_tensorrt_10():
    summary = parse_performance_summary(TRTEXEC_10)
    assert summary.throughput_qps == pytest.approx(812.418)
    assert summary.tensorrt_version == "10.3.0"
    assert set(summary.metrics) == {"Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency"}
    assert summary.metrics["Latency"] == pytest.approx(
        {"min": 1.19434, "max": 2.0188, "mean": 1.23152, "median": 1.22144, "p90": 1.25537, "p95": 1.27295,
         "p99": 1.46216})
    latency = summary.latency()  # GPU compute time: what the TensorRT backend times with CUDA events
    assert (latency.median_ms, latency.p90_ms, latency.p99_ms, latency.min_ms) == pytest.approx(
        (1.16162, 1.19507, 1.39893, 1.13672))
    assert summary.latency("Latency").median_ms == pytest.approx(1.22144)


def test_summary_of_tensorrt_8_has_only_the_99th_percentile():
    summary = parse_performance_summary("noise before\n" + TRTEXEC_8)
    assert summary.tensorrt_version == "8.2.1" and summary.throughput_qps == pytest.approx(28.9757)
    assert summary.metrics["End-to-End Host Latency"]["median"] == pytest.approx(34.9216)
    gpu = summary.latency()
    assert gpu.median_ms == pytest.approx(33.5995) and gpu.p99_ms == pytest.approx(34.8665)
    assert math.isnan(gpu.p90_ms)


def test_missing_summary_says_what_trtexec_printed_last():
    failed = "[I] Building engine\n[E] Error[4]: [network.cpp::validate::3011] Error Code 4: Internal Error\n" \
             "&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx"
    with pytest.raises(DeviceToolError, match="no '=== Performance summary ===' .*Error Code 4"):
        parse_performance_summary(failed)
    with pytest.raises(DeviceToolError, match="no 'D2H Latency' line"):
        parse_performance_summary(TRTEXEC_8).latency("D2H Latency")


def test_exported_profile_with_and_without_medians():
    records = [{"count": 120}, {"name": "node_Conv_306 + node_relu", "timeMs": 12.0, "averageMs": 0.1,
                                "medianMs": 0.098, "percentage": 40.0},
               {"name": "node_add", "timeMs": 3.6, "averageMs": 0.03, "percentage": 12.0}]
    times, runs = parse_trtexec_profile(json.dumps(records))
    assert runs == 120
    assert times == {"node_Conv_306 + node_relu": 0.098, "node_add": 0.03}  # averageMs before TensorRT 8.6


@pytest.mark.parametrize("board", sorted(TEGRASTATS))
def test_tegrastats_power_and_gpu_load(board):
    line, total, source, load = TEGRASTATS[board]
    parsed = parse_tegrastats_line(line)
    assert parsed["total_mw"] == total and parsed["total_source"] == source and parsed["gpu_load"] == load
    assert "RAM" not in parsed["rails"] and "SWAP" not in parsed["rails"]  # MB/kB pairs are not power rails


def test_tegrastats_average_column_and_a_line_without_power():
    assert parse_tegrastats_line(TEGRASTATS["orin-nano"][0])["rails"]["VDD_SOC"] == (2720, 3659)
    parsed = parse_tegrastats_line("RAM 100/200MB CPU [1%@100] GR3D_FREQ 5%")
    assert parsed["total_mw"] is None and parsed["total_source"] is None and parsed["gpu_load"] == 5


def test_power_mode_and_clocks():
    assert parse_nvpmodel(NVPMODEL) == ("15W", 2)
    assert parse_nvpmodel("no power mode here") == (None, None)
    clocks = parse_jetson_clocks(JETSON_CLOCKS_PINNED)
    assert clocks["pinned"] and clocks["online_cpus"] == 2  # the offline cpu2 does not count
    assert clocks["gpu_hz"] == {"min": 1300500000, "max": 1300500000, "current": 1300500000}
    dvfs = JETSON_CLOCKS_PINNED.replace("GPU MinFreq=1300500000", "GPU MinFreq=306000000")
    assert not parse_jetson_clocks(dvfs)["pinned"] and parse_jetson_clocks(dvfs)["cpus_pinned"]


# --- a missing trtexec ---------------------------------------------------------------------------

@pytest.fixture
def no_trtexec(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(trtexec_module, "JETPACK_TRTEXEC", tmp_path / "not-there" / "trtexec")


def test_missing_trtexec_is_a_clear_error(no_trtexec):
    with pytest.raises(BackendUnavailableError, match="not on PATH.*JetPack.*nvidia-jetpack"):
        find_trtexec()
    with pytest.raises(BackendUnavailableError, match="trtexec not found at /no/such/trtexec"):
        find_trtexec("/no/such/trtexec")


@pytest.mark.parametrize("command", ["bench", "profile"])
def test_cli_without_trtexec(no_trtexec, capsys, tmp_path, command):
    code = main([command, str(tmp_path / "m.onnx"), "--backend", "trtexec"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1, err
    assert f"prunefx {command}: error: the trtexec backend needs the `trtexec` program" in err
    assert "/usr/src/tensorrt/bin/trtexec" in err and "--trtexec" in err


# --- the whole flow, with stand-in programs ------------------------------------------------------

FAKE_TRTEXEC = '''\
import json, sys, time
import onnx
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
with open(sys.argv[0] + ".calls", "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
if "--skipInference" in sys.argv:  # a build: the "engine" names the file it was built from
    open(args["saveEngine"], "w").write(args["onnx"])
    time.sleep(0.3)  # tegrastats samples nothing of it
    open(sys.argv[0] + ".built", "w").write(str(time.time()))
    sys.exit(0)
if "exportProfile" in args:  # one layer per ONNX node, each Conv fused with the Relu after it, like TensorRT
    nodes = onnx.load(open(args["loadEngine"]).read()).graph.node
    layers, i = [], 0
    while i < len(nodes):
        fused = i + 1 < len(nodes) and nodes[i].op_type == "Conv" and nodes[i + 1].op_type == "Relu"
        layers.append(" + ".join(n.name for n in nodes[i:i + 2 if fused else i + 1]))
        i += 2 if fused else 1
    records = [{"count": 40}] + [{"name": n, "timeMs": 4.0, "averageMs": 0.1, "medianMs": 0.1 + k / 100,
                                  "percentage": 1.0} for k, n in enumerate(layers)]
    json.dump(records, open(args["exportProfile"], "w"))
    info = [{"Name": n, "LayerType": "CaskConvolution" if "Conv" in n else "PointWise",
             "TacticName": "sm80_xmma_fprop_sparse_conv" if k == 0 else "sm80_xmma_fprop_implicit_gemm",
             "Outputs": [{"Format/Datatype": "Half"}]} for k, n in enumerate(layers)]
    json.dump({"Layers": info, "Bindings": ["input_0", "output_0"]}, open(args["exportLayerInfo"], "w"))
time.sleep(0.6)  # long enough for the tegrastats stand-in to be sampled
print(open(sys.argv[0] + ".out").read())
'''


def _calls(trtexec) -> list[list[str]]:
    """The arguments of each run of the trtexec stand-in (its --help runs included)."""
    path = trtexec.parent / "trtexec.calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _script(folder, name: str, body: str):
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_jetson(tmp_path, monkeypatch):
    """trtexec, tegrastats, nvpmodel and jetson_clocks stand-ins on PATH, and a board that says it is a Jetson."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trtexec = _script(bin_dir, "trtexec", FAKE_TRTEXEC)
    (bin_dir / "trtexec.out").write_text(TRTEXEC_10)
    line = TEGRASTATS["orin-nano"][0]
    sampled = bin_dir / "tegrastats.times"
    _script(bin_dir, "tegrastats", f"import time\nwhile True:\n    print({line!r}, flush=True)\n"
                                   f"    open({str(sampled)!r}, 'a').write(f'{{time.time()}}\\n')\n    time.sleep(0.05)\n")
    _script(bin_dir, "nvpmodel", f"print({NVPMODEL!r})")
    _script(bin_dir, "jetson_clocks", f"print({JETSON_CLOCKS_PINNED!r})")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(trtexec_module, "is_jetson", lambda: True)
    return trtexec


def test_run_trtexec_records_power_mode_clocks_and_power_while_the_engine_runs(fake_jetson, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"")  # the stand-in reads the file only when profiling
    result = run_trtexec(onnx_path, TrtexecOptions(precision="fp16"))
    # the stand-in says TensorRT 10.3 and the file has no FP16 tensors: the weakly typed flag, version-checked
    assert result.build_command[0] == result.command[0] == str(fake_jetson) and "--fp16" in result.build_command
    assert "--stronglyTyped" not in result.build_command and trtexec_version(str(fake_jetson)) == "10.3.0"
    assert result.latency.median_ms == pytest.approx(1.16162)
    assert result.latency.runs == 2439  # what trtexec timed, not the --iterations floor
    assert result.jetson.power_mode == "15W" and result.jetson.power_mode_id == 2 and result.jetson.clocks_pinned
    assert result.power["samples"] >= 1 and result.power["mean_mw"] == 9120 and result.power["total_source"] == "VDD_IN"
    built = float((fake_jetson.parent / "trtexec.built").read_text())
    sampled = [float(t) for t in (fake_jetson.parent / "tegrastats.times").read_text().split()]
    assert sampled and min(sampled) > built  # the build's power is not the engine's
    assert json.loads(json.dumps(result.to_dict()))["jetson"]["power_mode"] == "15W"


def test_tegrastats_sampler_without_tegrastats(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with TegrastatsSampler(50) as sampler:
        pass
    summary = sampler.summary()
    assert summary["samples"] == 0 and summary["mean_mw"] is None and "tegrastats not found" in summary["problem"]


@pytest.mark.slow  # two captures and ONNX exports of ResNet-20: about 10 s
def test_cli_bench_and_profile_through_trtexec(fake_jetson, capsys, tmp_path):
    reference = ["prunefx:resnet20", "--input-shape", "1x1x28x28"]
    assert main(["bench", *reference, "--backend", "trtexec", "--precision", "fp16", "--runs", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "trtexec" and report["precision"] == "fp16" and report["threads"] is None
    assert report["latency"]["median_ms"] == pytest.approx(1.16162)
    assert report["latency"]["trtexec"]["jetson"]["clocks_pinned"] is True
    assert "--iterations=20" in report["latency"]["trtexec"]["command"]

    profile_json = tmp_path / "profile.json"
    assert main(["profile", *reference, "--backend", "trtexec", "-o", str(profile_json)]) == 0
    out = capsys.readouterr().out
    profile = json.loads(profile_json.read_text())
    assert profile["source"] == "trtexec" and profile["runs"] == 40
    rows = {row["layer"]: row for row in profile["layers"]}
    first = next(row for row in profile["layers"] if row["ran_sparse"])
    # the stem conv fused with its batch norm (by the exporter) and its ReLU (by "TensorRT"): three Program nodes
    assert first["program_nodes"] == ["conv2d", "batch_norm", "relu"] and first["precision"] == "FP16"
    assert sum(row["ran_sparse"] for row in rows.values()) == 1
    assert rows["node_add"]["program_nodes"] == ["add"]
    assert sum(row["share"] for row in rows.values()) == pytest.approx(1.0)
    slowest = max(rows.values(), key=lambda row: row["median_ms"])
    assert out.splitlines()[1].startswith(slowest["layer"][:40])  # slowest first
    assert "conv2d, batch_norm, relu" in out and f"{len(rows)} layers" in out


@pytest.mark.slow  # a compress run of ResNet-20 on Fashion-MNIST: about 15 s
def test_compress_states_the_trtexec_runs_of_its_final_latency(fake_jetson, capsys, tmp_path):
    """compress --backend trtexec: the report's latency is trtexec's (the stand-in answers one time for every
    file), at the precision asked, each side's run kept, and no interval claimed for runs one after the other."""
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(json.dumps({"passes": [{"remove_channels": {"macs": 0.5}}]}))  # YAML reads JSON
    code = main(["compress", "prunefx:resnet20", "--recipe", str(recipe), "--data", "fashion-mnist", "--batch-size",
                 "8", "--eval-batches", "1", "--runs", "20", "--backend", "trtexec", "--precision", "fp16",
                 "--no-stage-report", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    latency = json.loads((tmp_path / "out" / "report.json").read_text())["latency"]
    assert (latency["backend"], latency["precision"], latency["threads"]) == ("trtexec", "fp16", None)
    assert latency["dense_ms"] == latency["compressed_ms"] == pytest.approx(1.16162) and latency["interval"] is None
    runs = latency["measurement"]
    assert "--iterations=20" in runs["dense"]["trtexec"]["command"] and runs["compressed"]["trtexec"]["jetson"]
    assert "trtexec fp16, batch 1" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow  # three runs of the trtexec stand-in and an ONNX export: about 4 s
def test_trtexec_of_tensorrt_11_gets_an_fp16_file_and_no_precision_flags(fake_jetson, tmp_path):
    (fake_jetson.parent / "trtexec.out").write_text(TRTEXEC_10.replace("v100300", "v110000").replace(" --fp16", ""))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(onnx_path), dynamo=False, opset_version=18)
    result = run_trtexec(onnx_path, TrtexecOptions(precision="fp16"), workdir=tmp_path / "work")
    assert result.summary.tensorrt_version == "11.0.0"
    assert not {"--fp16", "--int8", "--stronglyTyped"} & set(result.build_command + result.command)
    assert "--noCudaGraph" in result.command and "--noDataTransfers" not in result.command  # 11's defaults
    built = next(a.split("=", 1)[1] for a in result.build_command if a.startswith("--onnx="))
    assert built.endswith("m.fp16.onnx")
    # what trtexec wrote is kept in the workdir once it succeeded, under its names
    assert onnx_types(tmp_path / "work" / "m.fp16.onnx") == FLOAT16
    with pytest.raises(MeasurementError, match="INT8 comes only from"):
        run_trtexec(onnx_path, TrtexecOptions(precision="int8"))


@pytest.mark.slow  # an ONNX export and four runs of the trtexec stand-in: about 3 s
def test_bench_builds_and_times_a_file_of_dynamic_batch_at_the_batch_asked(fake_jetson, tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    onnx_path = tmp_path / "dynamic.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(onnx_path), dynamo=False, opset_version=18,
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    argv = ["bench", str(onnx_path), "--input-shape", "32x3x8x8", "--backend", "trtexec", "--runs", "20", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    runs = [call for call in _calls(fake_jetson) if "--help" not in call]
    assert len(runs) == 2 and "--skipInference" in runs[0] and any(a.startswith("--loadEngine=") for a in runs[1])
    for call in runs:  # without them trtexec would build and time batch 1
        assert "--shapes='images':32x3x8x8" in call
    assert report["batch"] == 32 and report["latency"]["runs"] == 2439
    assert report["notes"] == ["trtexec timed 2439 queries: at least --runs, for at least 3 s"]


@pytest.mark.parametrize("version, percentiles", [("8.5.2", "--percentile=99"), ("8.2.1", "--percentile=99"),
                                                   ("8.6.1", "--percentile=90,95,99"), ("10.3.0", "--percentile=90,95,99"),
                                                   ("11.1.0", "--percentile=90,95,99")])
def test_trtexec_is_asked_for_the_percentiles_its_version_reads(version, percentiles):
    """trtexec before 8.6 reads one number: "90,95,99" gave JetPack 5.1's 8.5 the 90th alone, where the 99th is
    documented."""
    arguments = [a for a in timing_arguments("e", tensorrt_version=version) if a.startswith("--percentile")]
    assert arguments == [percentiles]
