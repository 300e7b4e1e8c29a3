"""prunefx prune MODEL --macs 0.5 -o DIR: structured channel pruning, written as model.pt2, model.onnx
and report.json (costs before/after, the width of every group, blocked groups, ONNX parity).

The pass options are remove_channels' own, each flag made from its config field (the flags:
prunefx/cli/arguments/prune.py). Given `--calibrate DATA` the defaults use it (obs, compensation, batch norms
recalibrated); a budget (`--speedup`, `--latency-ms`) is met by prunefx.meet_budget (prunefx/budget/). The
user-facing behaviour (calibration, device, budgets and their routes): see docs/reference/cli.md, 'prune'.
"""

from __future__ import annotations

import time
from pathlib import Path

from prunefx.cli import flags
from prunefx.cli import options as cli_options
from prunefx.cli.arguments.prune import BUDGETS, OPTIONS, RUNS, SEARCH, TARGETS
from prunefx.cli.prune_budget import check_allow_depth, meet_for_command_line
from prunefx.data.calibration import Calibration, noise_batches
from prunefx.deliverable import write_model
from prunefx.detectors import part_from_reference
from prunefx.device import current_gpu, on_device, resolve_device
from prunefx.graph.channels.choices import DATA_CRITERIA
from prunefx.graph.counted import counted
from prunefx.graph.errors import PrunefxError
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.image_statistics import calibration_read, record_given_statistics
from prunefx.interop.module_file import write_module
from prunefx.layer_latency import latency_table, table_multiple
from prunefx.loading import model_and_program
from prunefx.models import parse_input_shape
from prunefx.output import staged_folder
from prunefx.output_paths import check_output_folder
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.prune_to_budget import PruneToBudgetConfig, WidthChosen
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.removal.channels_removed import ChannelsRemoved
from prunefx.passes.remove_channels import RemoveChannelsConfig, remove_channels
from prunefx.reports import report_json
from prunefx.reports.prune_summary import summary_lines
from prunefx.reports.pruning_sections import pruning_sections
from prunefx.reports.report_facts import Costs, ReportFacts
from prunefx.reports.report_json import output_files
from prunefx.reports.seconds import WRITE_STAGE, StageSeconds
from prunefx.route_output import write_depth, write_joint

NAME = "prune"


def run(args) -> int:
    device = resolve_device(args.device)  # a GPU that is missing is refused before anything loads
    output = check_output_folder(args.output)
    budgeted = args.speedup is not None or args.latency_ms is not None
    cli_options.check_budget_backend(args, budgeted=budgeted, measures=args.choose_by == "latency",
                                     or_else=", or --choose-by latency to time a latency table there")
    if not budgeted:
        flags.refuse_unread(args, {name: PruneToBudgetConfig.default(name) for name in SEARCH},
                                  "only a budget's search reads these: give --speedup or --latency-ms")
        if args.choose_by != "latency":
            flags.refuse_unread(args, flags.measurement_defaults(RUNS),
                                      "only a budget's measurements (or --choose-by latency's table) read these")
    if args.choose_by == "latency" and not budgeted and args.ranking not in (None, "global"):
        raise PrunefxError("--choose-by latency ranks channels across groups by importance per millisecond saved: "
                           f"it takes --ranking global, not {args.ranking}")
    if args.compensate and not args.calibrate:
        raise PrunefxError("--compensate needs calibration images: give --calibrate DATA")
    if args.recalibrate and not args.calibrate:
        raise PrunefxError("--recalibrate needs calibration images: give --calibrate DATA")
    check_allow_depth(args)
    seconds = StageSeconds()
    with seconds.stage("load"):
        model, program = _program(args)
        record_given_statistics(args, program)
        program = program.eval()
    with seconds.stage("calibration"):
        calibration = _calibration(args, program)
        calibration = calibration.on(device) if calibration else None  # some readers run the module on them as given
    config = _config(args, calibration)
    started = time.perf_counter()
    # held until model.onnx is written: the file its confirmation exported of the chosen model is copied
    with cli_options.budget_measurer(args, budgeted=budgeted) as measurer:
        outcome = None
        if budgeted:
            with seconds.stage("budget search"):
                outcome = meet_for_command_line(args, program, calibration, _width_options(config), device, measurer)
            described = calibration.description if calibration else None
            if outcome.route == "depth":
                write_depth(output, program, outcome.result, command=NAME, outcome=outcome, calibration=described,
                            opset=args.opset, started=started, seconds=seconds)
                return 0
            if outcome.route == "width+depth":
                write_joint(output, program, outcome, calibration=described, opset=args.opset, seconds=seconds)
                return 0
            result = outcome.result
        else:  # the same Pipeline as the API and recipes: every step verified (lint, shapes, re-export), exact
            # steps checked, and a failure names the pass
            if args.choose_by == "latency":
                with seconds.stage("latency table"):
                    config |= _timed_choice(args, program, config["round_to"], device)
            steps = [_pruning_step(config)]
            if calibration is not None and args.calibrate and args.recalibrate is not False:
                steps.append((recalibrate_batchnorm, {"data": calibration.batches}))
            with seconds.stage("prune"), on_device(program, device) as placed:  # the dense Program goes back even
                # when a pass fails. on_copy=False: the dense Program is rewritten, not cloned; only its name is read
                # after, its costs are in the pass's facts, and a second copy of the weights would double the memory
                result = Pipeline(steps, verify="full").run(program, on_copy=False, after_step=seconds.after_step)
                placed.home(result.program)  # written from the CPU
        pruned, all_stats = result.program, result.stats()
        removal = (result.facts("prune_to_budget", WidthChosen).removal if outcome
                   else result.facts("remove_channels", ChannelsRemoved))
        if outcome is None:  # a budget search's removals are many: its stage is the search
            seconds.add_parts("prune: remove_channels", removal.seconds)
        recalibration = all_stats.get("recalibrate_batchnorm")
        print(f"pruned {program.name} to {_target_text(args)} ({_importance_text(removal)}, {removal.ranking}"
              f"{', compensated' if removal.compensated else ''}"
              f"{', batch norms recalibrated' if recalibration and recalibration['recalibrated'] else ''}) "
              f"in {time.perf_counter() - started:.1f} s; exporting to ONNX", flush=True)
        with staged_folder(output) as staging:
            with seconds.stage(WRITE_STAGE):
                delivered = write_model(staging, pruned, opset=args.opset)
                module = write_module(staging, pruned, model) if args.module else None
            report = report_json.write(staging, _facts(program.name, removal, delivered, output, outcome=outcome,
                                                       calibration=calibration.description if calibration else None,
                                                       recalibration=recalibration, module=module,
                                                       seconds=seconds.as_dict()))
        print("\n".join(summary_lines(report, output, batch=int(program.example_inputs[0].shape[0]))))
        return 0


def _program(args):
    """(the model, when --module writes back into it, or None; the Program): the model captured whole, or
    only its --part (prunefx/detectors.py)."""
    if args.module and args.part:
        raise PrunefxError("--module writes the whole model back; it cannot be combined with --part")
    if not args.part:
        model, program = model_and_program(args.model, weights=args.weights, input_shape=args.input_shape,
                                           keep_model=args.module, writes_onnx=True)
        if args.module and model is None:
            raise PrunefxError("--module needs the model's own Python code, which a saved .pt2 does not hold: "
                               "prune the model reference (torchvision:NAME, timm:NAME, file.py:FACTORY) instead")
        if has_fake_quant(program.graph):  # its activation ranges were read on the layers as they were
            raise PrunefxError(f"{args.model} is quantized (INT8 fake quantizers), whose ranges were calibrated on "
                               "the unpruned layers: prune the float model, then quantize it")
        return (model if args.module else None), program  # the Program holds its own copy of the weights
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return None, part_from_reference(args.model, None if args.part == "auto" else args.part,
                                     weights=args.weights, input_shape=shape)


def _calibration(args, program) -> Calibration | None:
    """The calibration batches, when anything reads them (see the module docstring)."""
    example = program.example_inputs[0]
    if args.calibrate:
        return calibration_read(args, program, example)
    if args.importance not in DATA_CRITERIA:
        return None
    return Calibration(noise_batches(example, args.calibration_batches), f"{args.calibration_batches} noise batches")


def _timed_choice(args, program, round_to: int | None, device) -> dict:
    """--choose-by latency with a MACs, parameter or channel target: remove_channels' latency_table, timed on
    --backend at --batch (cached as a budget's is), and the width multiple it was timed at (the backend's unless
    --round-to says), so that the target's MACs go where the table says they buy the most time."""
    measurement = cli_options.measurement(args)
    multiple = table_multiple(round_to, cli_options.budget_latency(args))
    with current_gpu(device):  # cuda:N timed as the passes' GPU, as a budget's table is
        table = latency_table(program, measurement=measurement, multiple=multiple)
    summary = table.summary()
    print(f"latency table on {args.backend} at batch {measurement.settings.batch}: {counted(summary['layers'], 'layer')}, "
          f"{summary['entries_timed']} widths timed, {summary['entries_cached']} from the cache, "
          f"{summary['seconds']:.1f} s", flush=True)
    return {"latency_table": table, "round_to": multiple}


def _pruning_step(config: dict):
    """remove_channels for a MACs, parameter or width target (a measured budget: _meet_budget)."""
    # no backend measures: remove_channels' own multiple
    config = {**config, "round_to": config["round_to"] or RemoveChannelsConfig.default("round_to")}
    return remove_channels, {key: value for key, value in config.items() if key not in (*BUDGETS, *SEARCH)}


def _config(args, calibration: Calibration | None) -> dict:
    config = flags.pass_config(args, (*TARGETS, *BUDGETS, *SEARCH, *OPTIONS))
    if calibration is not None:  # noise (no --calibrate) is read by a named criterion, never to fit weights:
        config["calibration"] = calibration.batches  # compensation defaults on only with the default importance
    return config


def _width_options(config: dict) -> dict:
    """The width search's remove_channels options: the config without its target, budget and search keys."""
    return {key: value for key, value in config.items() if key not in (*TARGETS, *BUDGETS, *SEARCH)}


def _target_text(args) -> str:
    kind = next(k for k in (*TARGETS, *BUDGETS) if getattr(args, k) is not None)
    return f"{kind}={getattr(args, kind):g}"


def _importance_text(removal: ChannelsRemoved) -> str:
    """The criterion, and how many groups it had nothing to read in and l2 scored instead (a bn criterion on a
    model without batch norms scores none of them itself)."""
    fallback = removal.importance_fallback_groups
    if not fallback or removal.importance == "l2":
        return str(removal.importance)
    return f"{removal.importance}; l2 for {fallback} of {len(removal.groups)} groups"


def _facts(name, removal: ChannelsRemoved, delivered: dict, output: Path, *, outcome, calibration, recalibration,
           module, seconds: dict) -> ReportFacts:
    """report.json's facts (prunefx/reports/report_json.py): the costs are the removal's, counted before the
    Pipeline rewrote the dense Program in place."""
    costs = Costs(removal.macs_before, removal.macs_after, removal.params_before, removal.params_after)
    written = ("model.pt2", "model.onnx", "report.json", *([module["file"]] if module and module["written"] else []))
    return ReportFacts("prune", name, costs, output_files(output, *written), parity=delivered["parity"],
                       calibration=calibration, outcome=outcome,
                       sections=pruning_sections(removal=removal, recalibration=recalibration, delivered=delivered,
                                                 module=module, seconds=seconds))
