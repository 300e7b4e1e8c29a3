"""The runs behind the published figures (this is not a benchmark; run_all.py skips it).

One `Run` for each results file in benchmarks/results/: the script and the arguments that make that file from
scratch with the settings it was published with (no `--report-only`, no cache of an earlier run: run_all.py
gives the benchmarks a fresh build/bench/ to keep what they resume from), its lane and its planned minutes:
- "bench": what `make bench` reruns in about 95 minutes on 2 cores (BENCH_MINUTES): the headline rows whose
  runs time models without training them (channel pruning's speed-up, the latency-aware choice, the tool's
  time and memory, and where that time goes), the GPU row, and the zoo and write-back coverage with today's
  defaults;
- "all": `make bench-all` adds every other results file shown in the README or the docs: the runs that train
  (Fashion-MNIST, segmentation, detection: hours each), ModelOpt's side by side (4 hours), the budgets.
`needs` names what a run cannot do without ("gpu"): run_all.py skips it, and says so, on a machine without
one.
`minutes` is the run's duration as run_all.py last reported it on 2 cores, rounded up, or else the sum of the
durations its results file records (training, searches, timed runs); `guessed=True` says neither is known,
and the figure is an estimate. A baseline
that several runs share (the Fashion-MNIST models, cached by model and epochs) counts for the first run of the
lane that trains it.

tests/test_bench_provenance.py holds each results file to its entry: the file exists, the script takes every
option given here, the command the file records is this one, and the bench lane stays within BENCH_MINUTES.
"""

from __future__ import annotations

from dataclasses import dataclass

LANES = ("bench", "all")
BENCH_MINUTES = 95  # `make bench` on 2 cores; the rest goes to `make bench-all`


@dataclass(frozen=True)
class Run:
    results: str  # benchmarks/results/RESULTS.json
    script: str  # benchmarks/SCRIPT.py
    arguments: tuple[str, ...] = ()
    lane: str = "all"
    needs: str | None = None
    minutes: float = 0.0  # planned duration on 2 cores
    guessed: bool = False  # True: an estimate, not durations the results file records

    @property
    def estimate(self) -> str:
        return f"{self.minutes:g} min" + (" (guess)" if self.guessed else "")

    def argv(self) -> list[str]:
        """The command line after the interpreter, from the repository root."""
        return [f"benchmarks/{self.script}.py", *self.arguments]


FASHION_MNIST_MODELS = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")

RUNS = (
    # make bench: about 95 minutes on 2 cores (its last run: 88 minutes).
    Run("prune_latency", "prune_latency", lane="bench", minutes=18),
    Run("latency_aware_choice", "latency_aware_choice", ("--baseline-epochs", "2", "--equal-macs"),
        lane="bench", minutes=13),
    # every case of four models and ViT-g/14's uncalibrated one, 3 rounds
    Run("tool_speed", "tool_speed", ("--timeout", "300"), lane="bench", minutes=46),
    # ViT-L/16's --speedup 2 case alone, run to its end (the table above stops it at 300 s)
    Run("tool_speed_vit_l16_budget", "tool_speed",
        ("--pair", "vit_l16", "speedup", "--repeat", "1", "--timeout", "900", "--results-name",
         "tool_speed_vit_l16_budget"), minutes=5),
    # where the calibrated case's time goes, stage by stage (the tool-speed page's last table)
    Run("tool_profile", "tool_profile", lane="bench", minutes=3),
    # how fast `prunefx CMD --help` and a mistyped flag answer
    Run("cli_startup", "cli_startup", lane="bench", minutes=1),
    # Skipped on a machine without a GPU; a few minutes on one.
    Run("semi_structured_speedup", "semi_structured_speedup",
        ("--models", "vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224"), lane="bench",
        needs="gpu", minutes=3, guessed=True),
    # Coverage: every model of the zoo and of the write-back, pruned with today's defaults.
    Run("prune_zoo", "prune_zoo", lane="bench", minutes=6),
    Run("write_back_coverage", "write_back_coverage", lane="bench", minutes=4),
    # make bench-all adds the rest: first the README's other headline rows, in the README's order.
    Run("modelopt_side_by_side", "modelopt_side_by_side",
        ("--models", "resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny", "deit_small",
         "swin_tiny", "yolov8n", "--size", "160"), minutes=11),
    Run("one_shot_accuracy", "one_shot_accuracy",
        ("--baseline-epochs", "8", "vit_tiny_fmnist=2", "mobilenetv2_small=2", "--imagenet", "--threads", "1"),
        minutes=60, guessed=True),
    Run("fashion_mnist_accuracy", "fashion_mnist_accuracy",
        ("--latency", "--models", *FASHION_MNIST_MODELS, "--baseline-epochs", "8", "mobilenetv2_small=4",
         "vit_tiny_fmnist=6", "--threads", "2"), minutes=95),
    Run("int8_latency", "int8_latency",
        ("--models", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_s16", "--fashion-mnist", *FASHION_MNIST_MODELS,
         "--recovery-steps", "469", "--qat-steps", "469"), minutes=26),
    Run("dense_tasks", "dense_tasks",
        ("--models", "unet_mobilenetv2", "lraspp_mobilenetv3", "segformer_mit_b0", "--train", "4000", "--batch", "16",
         "--baseline-epochs", "3", "lraspp_mobilenetv3=15", "segformer_mit_b0=11", "--fractions", "0.5", "0.33",
         "--latency", "--int8"), minutes=39),
    Run("detection_scenes", "detection_scenes",
        ("--variants", "prunefx-l2", "prunefx-obs", "prunefx-cpd", "tp-l2", "prunefx-obs-budget", "--epochs", "2",
         "--budget-epochs", "2", "4", "8", "--int8", "--latency"), minutes=38),
    Run("sparsity_accuracy", "sparsity_accuracy", ("--baseline-epochs", "8", "mobilenetv2_small=4"), minutes=42),
    # both models, both rankings of the blocks: one results set
    Run("depth_vs_channel", "depth_vs_channel",
        ("--models", "mobilenetv2_small", "convnext_fmnist", "--threads", "2", "--baseline-epochs", "4", "--depths",
         "2", "4", "6", "--ranks", "damage", "damage_per_mac", "--fractions", "0.7", "0.5"), minutes=42),
    Run("latency_budget", "latency_budget", ("--input-size", "160", "--results-name", "latency_budget"),
        minutes=12),
    # prunefx against Torch-Pruning on a GPU (cuda backend, fp16): every row, beyond make gpu-check's minutes.
    Run("gpu_speedup", "gpu_speedup", ("--time-limit", "3600"), lane="all", needs="gpu", minutes=30, guessed=True),
    # The benchmark pages' other results.
    # its three studies: the CNNs at 2x and 4x, at equal latency, the ViT
    Run("budget_choice", "budget_choice", minutes=30),
    Run("combing_time", "combing_time", minutes=1),
    # simulated (an oracle runtime): the budget search's rules on a machine busy for a while
    Run("budget_search_noise", "budget_search_noise", minutes=4),
    # simulated: the width search's steps under timing jitter, its bracket's ends drawn in (Illinois) and as read
    Run("bracket_steps", "bracket_steps", minutes=10),
    # the OBS elimination's host reads (each a wait on a GPU), counted on the CPU
    Run("obs_host_reads", "obs_host_reads", minutes=1),
    # a real speed-up reading beside a competing process, and the share of the cores the load meter reads
    Run("busy_machine", "busy_machine", ("--repeats", "3"), minutes=8),
    # real budget searches beside a competitor that runs for a while, the load said and unsaid, checked quietly
    Run("busy_budget", "busy_budget", ("--trials", "4"), minutes=10),
    Run("gelu_opset", "gelu_opset", minutes=4, guessed=True),
    Run("latency_choice_speed", "latency_choice_speed", minutes=4),
    # ONNX Runtime tables timed four ways, four builds each on two models, and their choices timed side by side
    Run("table_timing", "table_timing", minutes=19),
    Run("table_timing_more", "table_timing", ("--models", "vit_small_patch16_224", "efficientnet_b0", "--builds", "3",
                                              "--kinds", "alone", "together", "--results-name", "table_timing_more"),
        minutes=8),
    Run("data_loading", "data_loading", minutes=2),
    Run("data_loading_routes", "data_loading",
        ("--canvases", "128", "--rounds", "4", "--stream", "0", "--results-name", "data_loading_routes"),
        minutes=1),
    Run("depth_pruning", "depth_pruning", ("--runs", "300"), minutes=2),
    Run("detector_pruning", "detector_pruning", ("--runs", "80"), minutes=2),
    Run("fashion_mnist_accuracy_3epochs", "fashion_mnist_accuracy",
        ("--epochs", "3", "--models", "resnet20", "--fractions", "0.5", "0.33", "--variants", "prunefx-obs", "tp-l2",
         "--threads", "2"), minutes=18),
    Run("fashion_mnist_loading", "fashion_mnist_loading", minutes=1),
    Run("fold_batchnorm_latency", "fold_batchnorm_latency", minutes=1),
    Run("fp16_readiness", "fp16_readiness", minutes=1),
    Run("int8_after_pruning", "int8_after_pruning", minutes=2),
    Run("int8_attention", "int8_attention", minutes=10, guessed=True),
    Run("int8_head_to_head", "int8_head_to_head", minutes=3),
    Run("int8_methods", "int8_methods", minutes=11),
    Run("int8_profile", "int8_profile", ("--models", "mobilenet_v2", "resnet50", "efficientnet_b0", "vit_s16", "--runs", "100"),
        minutes=3),
    # where prune_latency's pruned models spend their time, operator type by type (its target's misses)
    Run("prune_profile", "prune_profile", minutes=5, guessed=True),
    Run("plain_loop_recovery", "plain_loop_recovery", minutes=2),
    Run("process_rounds", "process_rounds", ("--repeats", "6"), minutes=2),
    # a ViT-L's search readings with its blocks fitted to several passes of a round, or to one
    Run("long_call_readings", "long_call_readings", ("--repeats", "10"), minutes=7, guessed=True),
    # the files latency_budget's run (earlier in this list) leaves in run_all.py's build/bench/latency_budget/
    Run("process_rounds_effb1_3x", "process_rounds",
        ("--pair", "build/bench/latency_budget/torchvision_efficientnet_b1_160/dense.onnx",
         "build/bench/latency_budget/torchvision_efficientnet_b1_160/speedup3/model.onnx", "--rounds", "4", "8", "16",
         "--repeats", "6", "--runs", "200", "--results-name", "process_rounds_effb1_3x"),
        minutes=2),
    Run("prune_defaults", "prune_defaults", ("--epochs", "2", "--threads", "1"),
        minutes=4),
    # the write-back beyond the tests' models: one or two timm models of each family, a process each
    Run("write_back_timm", "write_back_timm", minutes=35),
    # the same over Hugging Face's vision models (small configurations), the module alone
    Run("write_back_hf", "write_back_hf", minutes=5),
    # what the write-back's proof module by module catches (a hidden wrong scale), and its cost
    Run("write_back_proof", "write_back_proof", minutes=3),
    # the cost of factoring layer Hessians on one BLAS thread (graph/numerics/cholesky_inverse.py)
    Run("hessian_factorisation", "hessian_factorisation", minutes=5),
)


def runs(lane: str) -> list[Run]:
    """The runs of `lane` ("bench": the headline and coverage figures; "all": every results file)."""
    if lane not in LANES:
        raise ValueError(f"lane must be one of {', '.join(LANES)}, not {lane!r}")
    return [run for run in RUNS if lane == "all" or run.lane == lane]
