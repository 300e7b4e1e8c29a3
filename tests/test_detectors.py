"""Detectors: prune the exportable part of torchvision detectors and put it back (prunefx.detectors), and
Ultralytics YOLO through the `ultralytics:NAME` model reference.

The oracle is the detector itself: its final boxes, scores and labels (torchvision) or its decoded
predictions (YOLO) are compared numerically, and ONNX files are read with `onnx` and run with ONNX Runtime.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
import torchvision

import prunefx
from prunefx.detectors import (
    GraphPart,
    PartError,
    capture_part,
    part_from_reference,
    prune_part,
    replace_part,
    softmax_nodes,
    to_ultralytics,
)
from prunefx.graph import count, verify
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.removal import remove_classes
from prunefx.models import ModelReferenceError, build_model, prepare_ultralytics
from prunefx.passes import remove_channels
from prunefx.runtime import OnnxRuntimeSession, check_parity, export_onnx

TOLERANCE = 1e-4  # relative to the largest magnitude of the compared output


def _ssd():
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    return _spread_scores(model.head.classification_head, model)


def _fcos():
    # A fixed square size keeps the backbone's input at the captured shape; small for test speed.
    model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, min_size=128,
                                                           max_size=128, score_thresh=0.05)
    return _spread_scores(model.head.classification_head, model)


def _spread_scores(classification_head, model):
    """Random weights give nearly equal class scores, whose order a rounding error could swap: scale the
    classification head so that scores differ and the comparison of ranked detections is meaningful."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in classification_head.parameters():
            parameter.mul_(8.0)
    return model.eval()


DETECTORS = {"ssdlite320_mobilenet_v3_large": _ssd, "fcos_resnet50_fpn": _fcos}


def _image(size: int = 128) -> list[torch.Tensor]:
    return [torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))]


def _detect(model, images) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(images)[0]


def _canonical(detections: dict) -> dict:
    """Detections in one order that does not depend on ranking: by label, then box corners. Two random-weight
    detections can have scores equal to 1e-7, which a rounding error may swap in the ranked output."""
    boxes, labels = detections["boxes"], detections["labels"]
    order = np.lexsort([boxes[:, i].numpy() for i in reversed(range(4))] + [labels.numpy()])
    return {key: value[torch.from_numpy(order)] for key, value in detections.items()}


def _assert_same_detections(actual: dict, expected: dict) -> None:
    assert len(expected["boxes"]) > 0, "no detections: the comparison would be vacuous"
    actual, expected = _canonical(actual), _canonical(expected)
    assert torch.equal(actual["labels"], expected["labels"])
    for key in ("boxes", "scores"):
        assert actual[key].shape == expected[key].shape
        scale = expected[key].abs().max()
        assert (actual[key] - expected[key]).abs().max() <= TOLERANCE * scale


@pytest.mark.slow
@pytest.mark.parametrize("name", DETECTORS)
def test_removing_zeroed_backbone_channels_leaves_detections_unchanged(name, one_thread, zero_channels):
    model, images = DETECTORS[name](), _image()
    program = capture_part(model, (images,), "backbone")
    # Put back unchanged, the captured graph gives the eager model's detections (dict outputs kept).
    _assert_same_detections(_detect(replace_part(model, "backbone", program), images), _detect(model, images))

    combing = find_channel_groups(program.module)
    rng = np.random.default_rng(0)
    removed = {int(c) for g in combing.groups if g.exact and g.size >= 2
               for c in rng.choice(g.classes, g.size // 3, replace=False)}
    zero_channels(program, combing, removed)
    expected = _detect(replace_part(model, "backbone", program), images)
    macs = count(program).macs
    assert remove_classes(program.module, combing.analysis, removed)
    program.recompile()
    verify(program)
    assert count(program).macs < 0.9 * macs
    _assert_same_detections(_detect(replace_part(model, "backbone", program), images), expected)


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
@pytest.mark.parametrize(("name", "part"), [("ssdlite320_mobilenet_v3_large", None), ("fcos_resnet50_fpn", "backbone")])
def test_half_the_backbone_macs_detector_runs_and_part_matches_onnx(name, part, one_thread, tmp_path):
    model, images = DETECTORS[name](), _image()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_part(model, (images,), [(remove_channels, {"macs": 0.5})], part=part)
    # Found automatically for SSD: the head has fewer parameters, and takes a list (never a candidate).
    assert pruned.part == "backbone"
    stats = pruned.result.stats()["remove_channels"]
    assert stats["macs_after"] / stats["macs_before"] == pytest.approx(0.5, abs=0.015)
    assert count(pruned.program).macs < 0.52 * count(pruned.dense).macs
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the user's model changed"

    detections = _detect(pruned.model, images)  # the whole detector, its own post-processing included
    assert isinstance(pruned.model.backbone, GraphPart)
    assert detections["boxes"].shape[1] == 4 and len(detections["boxes"]) == len(detections["labels"])
    with torch.no_grad():
        features = pruned.model.backbone(pruned.dense.example_inputs[0])
    assert list(features) == list(pruned.dense.run_example())  # OrderedDict of feature maps, same keys

    path = export_onnx(pruned.program, tmp_path / "backbone.onnx").path
    graph = onnx.load(path).graph
    onnx_shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output]
    assert onnx_shapes == [list(t.shape) for t in features.values()]  # the neck's widths kept
    assert check_parity(pruned.program, path).relative < TOLERANCE


@pytest.mark.slow
def test_part_saved_and_loaded_goes_back_into_the_detector(one_thread, tmp_path):
    # The CLI's path (--part): capture from a model reference, save as .pt2, load, put back.
    program = part_from_reference("torchvision:ssdlite320_mobilenet_v3_large", None, input_shape=(1, 3, 96, 96))
    assert program.name == "torchvision:ssdlite320_mobilenet_v3_large.backbone"
    assert tuple(program.example_inputs[0].shape) == (1, 3, 320, 320)  # SSDLite resizes every image to 320
    loaded = prunefx.load(program.save(tmp_path / "backbone.pt2"))
    model, images = _ssd(), _image()
    with torch.no_grad():
        model.backbone.load_state_dict(program.module.state_dict())  # the reference's random weights
    _assert_same_detections(_detect(replace_part(model, "backbone", loaded), images), _detect(model, images))


def test_part_errors_are_one_line(one_thread):
    model, images = _ssd(), _image()
    with pytest.raises(PartError, match="has no submodule 'neck'"):
        capture_part(model, (images,), "neck")
    with pytest.raises(PartError, match="called with \\(list\\)"):
        capture_part(model, (images,), "head")


@pytest.mark.parametrize("part", ["", None])
def test_a_part_that_names_no_submodule_is_refused_not_read_as_the_whole_model(one_thread, part):
    # get_submodule("") is the model itself: the pruned graph went in beside it, as a child named "", and the
    # model handed back computed as the dense one
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(PartError, match="dotted name of a submodule"):
        replace_part(model, part, prunefx.capture(model, x))
    if part == "":
        with pytest.raises(PartError, match="dotted name of a submodule"):
            prune_part(model, x, [(remove_channels, {"macs": 0.5})], part=part)
    assert [name for name, _ in model.named_children()] == ["0", "1", "2"]


def test_graph_part_refuses_other_shapes_and_follows_train_eval(one_thread):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))

        def forward(self, x):
            return self.body(x).mean()

    model = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    swapped = replace_part(model, "body", capture_part(model, x))
    assert isinstance(swapped.body, GraphPart) and not isinstance(model.body, GraphPart)
    assert torch.allclose(swapped(x), model(x))
    with pytest.raises(PartError, match="captured for input 1x3x16x16"):
        swapped(torch.randn(1, 3, 20, 20))
    swapped.train()
    assert swapped.body.program.training  # the batch norm inside the graph now uses batch statistics
    swapped.eval()
    assert not swapped.body.program.training


# --- Ultralytics ------------------------------------------------------------------------------------

YOLO_SIZE = 160


def _yolo(name: str):
    pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0, dev extra) is not installed")
    spec = build_model(f"ultralytics:{name}", image_size=YOLO_SIZE)
    x = torch.rand(spec.default_input_shape, generator=torch.Generator().manual_seed(0))
    _lively_weights(spec.module)
    _condition_head(spec.module, x)
    return spec, prunefx.capture(spec.module, x, name=spec.name).eval(), x


def _lively_weights(model) -> None:
    """Ultralytics' default initialisation shrinks activations layer by layer until the head reads ~1e-10 and
    its outputs are constants: draw every trainable conv for unit gain instead (He init), so outputs vary."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.weight.requires_grad:  # the DFL integral stays fixed
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)


def _condition_head(model, x) -> None:
    """Random weights may saturate YOLO's head: a one-hot softmax over the box bins (integer boxes, blind to
    small changes), class scores at sigmoid(-11). Rescale every final box and class conv so that its
    outputs on `x` have zero mean and unit spread, so that the comparisons below can see a change."""
    head = model.model[-1]
    finals = [branch[-1] for branch in (*head.cv2, *head.cv3)]
    outputs = {}
    hooks = [conv.register_forward_hook(lambda conv, _, y: outputs.__setitem__(conv, y)) for conv in finals]
    with torch.no_grad():
        model(x)
        for hook in hooks:
            hook.remove()
        for conv in finals:
            mean, std = outputs[conv].mean(), outputs[conv].std()
            conv.weight.div_(std)
            conv.bias.sub_(mean).div_(std)


def _assert_close_boxes_and_scores(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Decoded boxes (rows 0-3, pixels) and class scores (rows 4-, probabilities) each against their own scale."""
    assert actual.shape == expected.shape
    for rows in (slice(0, 4), slice(4, None)):
        want, got = expected[:, rows], actual[:, rows]
        assert want.std() > 1e-3 * want.abs().max(), "a constant output would make the comparison vacuous"
        assert (got - want).abs().max() <= TOLERANCE * want.abs().max()


def _widths(program, suffix: str) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for name, t in program.state_dict().items() if name.endswith(suffix)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo_zeroed_channels_removed_exactly_head_outputs_kept(name, one_thread, zero_channels):
    _, program, x = _yolo(name)
    combing = find_channel_groups(program.module, keep=set(softmax_nodes(program)))
    # Nothing blocks a group but the softmax inputs kept on purpose: every YOLO operator has a channel rule.
    assert {op for blocked in combing.blocked for op in blocked.operators} <= {"aten.softmax.int"}
    rng = np.random.default_rng(0)
    removed = {int(c) for g in combing.groups if g.exact and g.size >= 2
               for c in rng.choice(g.classes, g.size // 2, replace=False)}
    box_convs, dfl = _widths(program, "cv2.0.2.weight"), _widths(program, "dfl.conv.weight")
    zero_channels(program, combing, removed)
    with torch.no_grad():
        expected = program(x)
    assert remove_classes(program.module, combing.analysis, removed)
    program.recompile()
    verify(program)
    with torch.no_grad():
        actual = program(x)
    assert actual.shape == (1, 84, 20 * 20 + 10 * 10 + 5 * 5)
    _assert_close_boxes_and_scores(actual, expected)
    # The 4 x 16 distribution bins of the box convs and the integral conv keep their widths.
    assert [w[0] for w in _widths(program, "cv2.0.2.weight")] == [w[0] for w in box_convs] == [64]
    assert _widths(program, "dfl.conv.weight") == dfl == [(1, 16, 1, 1)]


@pytest.mark.slow
def test_yolo_half_macs_matches_onnx_and_runs_in_ultralytics_predict(one_thread, tmp_path):
    _, program, _ = _yolo("yolov8n.yaml")
    config = {"macs": 0.5, "keep": softmax_nodes(program)}
    result = prunefx.Pipeline([(remove_channels, config)]).run(program)
    pruned = result.program
    assert count(pruned).macs / count(program).macs == pytest.approx(0.5, abs=0.015)

    path = export_onnx(pruned, tmp_path / "yolo.onnx").path
    model = onnx.load(path)
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output] == [[1, 84, 525]]
    assert check_parity(pruned, path).relative < TOLERANCE
    x = pruned.example_inputs[0]
    onnx_output = torch.from_numpy(OnnxRuntimeSession(path, threads=1).run(x)[0])
    with torch.no_grad():
        _assert_close_boxes_and_scores(onnx_output, pruned(x))  # scores too, not only the pixel-sized boxes

    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    yolo.model = to_ultralytics(pruned, yolo.model)
    image = (np.random.default_rng(0).random((YOLO_SIZE, YOLO_SIZE, 3)) * 255).astype(np.uint8)
    results = yolo.predict(image, imgsz=YOLO_SIZE, rect=False, conf=1e-4, verbose=False)
    boxes = results[0].boxes
    assert len(boxes) > 0 and boxes.xyxy.shape[1] == 4
    # Ultralytics ran our graph: its top score is the graph's best class score on the same letterboxed input.
    with torch.no_grad():
        raw = pruned(torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255)
    assert float(boxes.conf.max()) == pytest.approx(float(raw[0, 4:].max()), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 128])
def test_unpruned_yolo_captured_small_writes_back_and_matches_ultralytics(size, one_thread):
    """At these sizes a Detect view's inferred spatial size (4 x 4) equals its reg_max (16): the write-back
    must not take the view's unchanged -1 for a width. Oracle: a twin Ultralytics never handed to prunefx."""
    pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0, dev extra) is not installed")
    from ultralytics.nn.tasks import DetectionModel

    from prunefx.interop.ultralytics_bridge import to_ultralytics_module

    model, twin = (DetectionModel("yolov8n.yaml", verbose=False).eval() for _ in range(2))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    _lively_weights(model)
    _condition_head(model, x)
    twin.load_state_dict(model.state_dict())
    program = prunefx.capture(prepare_ultralytics(model), x).eval()
    written = to_ultralytics_module(program, model).eval()
    other = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_close_boxes_and_scores(written(other)[0], twin(other)[0])


def test_ultralytics_reference_errors():
    pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0, dev extra) is not installed")
    with pytest.raises(ModelReferenceError, match="name a model yaml"):
        build_model("ultralytics:yolov8n")
    with pytest.raises(ModelReferenceError, match="not found"):
        build_model("ultralytics:missing/best.pt")
    with pytest.raises(ModelReferenceError, match="multiple of 32"):
        build_model("ultralytics:yolov8n.yaml", image_size=100)


def test_ultralytics_reference_says_to_install_it_when_missing(monkeypatch):
    for name in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of a None entry raises ImportError
    with pytest.raises(ModelReferenceError, match="pip install ultralytics"):
        build_model("ultralytics:yolov8n.yaml")


@pytest.mark.slow
@pytest.mark.zoo  # heavy end-to-end: `make test-zoo` (keeps `make test` within 20 minutes)
def test_prune_part_on_the_command_line_and_the_pruned_part_goes_back(one_thread, tmp_path, capsys):
    from prunefx.cli import main

    assert main(["prune", "torchvision:ssdlite320_mobilenet_v3_large", "--part", "backbone", "--input-shape",
                 "1x3x320x320", "--macs", "0.5", "--round-to", "8", "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    pruned = prunefx.load(tmp_path / "out" / "model.pt2")
    model = _ssd()
    whole = replace_part(model, "backbone", pruned)
    assert count(pruned).macs < 0.53 * count(part_from_reference("torchvision:ssdlite320_mobilenet_v3_large",
                                                                 "backbone", input_shape=(1, 3, 320, 320))).macs
    with torch.no_grad():
        detections = whole([torch.rand(3, 320, 320)])  # the whole detector runs, post-processing included
    assert {"boxes", "scores", "labels"} <= set(detections[0])


def test_an_ultralytics_checkpoint_saved_frozen_comes_back_trainable(tmp_path):
    # Ultralytics saves its EMA copy with requires_grad False; recovery training must still reach every weight.
    pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0, dev extra) is not installed")
    from ultralytics.nn.tasks import DetectionModel

    frozen = DetectionModel("yolov8n.yaml", nc=3, verbose=False).requires_grad_(False)
    torch.save({"model": frozen}, tmp_path / "best.pt")
    spec = build_model(f"ultralytics:{tmp_path / 'best.pt'}", image_size=64)
    parameters = list(spec.module.parameters())
    assert parameters and all(p.requires_grad for p in parameters)


class _TwoParts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3))
        self.head = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_prune_part_and_replace_part_leave_the_model_and_the_program_as_found():
    """prune_part runs the model to find its part's inputs: a training model's batch-norm statistics and torch's
    random state stay as they were; replace_part puts a copy of the Program in, whose mode stays its own."""
    torch.manual_seed(0)
    model = _TwoParts().train()
    norm = model.backbone[1]
    statistics = norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked)
    images = torch.randn(2, 3, 8, 8)
    random_state = torch.get_rng_state()
    prune_part(model, (images,), [(remove_channels, {"macs": 0.5, "round_to": 2, "importance": "l2"})],
               part="backbone")
    assert torch.equal(norm.running_mean, statistics[0]) and torch.equal(norm.running_var, statistics[1])
    assert int(norm.num_batches_tracked) == statistics[2] and torch.equal(torch.get_rng_state(), random_state)

    program = capture_part(model, torch.randn(2, 3, 8, 8), "backbone").eval()
    weights = {name: tensor.clone() for name, tensor in program.state_dict().items()}
    whole = replace_part(model, "backbone", program)  # a training model: the copy trains
    assert whole.backbone.training and not program.training
    assert whole.backbone.graph_module is not program.module
    with torch.no_grad():
        for parameter in whole.backbone.parameters():
            parameter.add_(1.0)
    assert all(torch.equal(weights[name], tensor) for name, tensor in program.state_dict().items())


def test_evaluating_a_model_gives_a_frozen_graph_part_its_mode_back():
    """A detector training with its pruned part frozen: evaluation (graph/eval_mode.py, behind evaluate and
    evaluate_dense) gives the part back in eval mode, its graph's flags included, the rest training."""
    from prunefx.graph.eval_mode import evaluating
    torch.manual_seed(0)
    model = _TwoParts().eval()
    whole = replace_part(model, "backbone", capture_part(model, torch.randn(2, 3, 8, 8), "backbone").eval()).train()
    whole.backbone.train(False)
    with evaluating(whole):
        assert not whole.training and not whole.backbone.program.training
    assert whole.training and whole.head.training
    assert not whole.backbone.training and not whole.backbone.program.training


def test_evaluating_a_training_model_keeps_a_frozen_batch_norm_inside_its_graph_part_frozen():
    """The part trains with one batch norm frozen: evaluating the model (evaluate, evaluate_dense) gave the part
    back through its train(), which sets every flag of its graph alike, and the frozen batch norm trained again."""
    from prunefx.graph.eval_mode import evaluating
    torch.manual_seed(0)
    model = _TwoParts().train()
    model.backbone[1].eval()
    pruned = prune_part(model, (torch.randn(2, 3, 8, 8),), [], part="backbone").model
    found = pruned.backbone.program.modes()
    with evaluating(pruned):
        assert not any(pruned.backbone.program.modes().flags.values())
    assert pruned.backbone.program.modes() == found
    assert pruned.training and pruned.backbone.training and pruned.head.training


def test_a_frozen_batch_norm_of_a_training_model_stays_frozen_in_the_pruned_part():
    torch.manual_seed(0)
    model = _TwoParts().train()
    model.backbone[1].eval()
    pruned = prune_part(model, (torch.randn(2, 3, 8, 8),), [], part="backbone")
    flags = list(pruned.model.backbone.program.modes().flags.values())
    assert flags == list(pruned.dense.modes().flags.values()) == [False]
    assert pruned.model.backbone.training and pruned.model.head.training and not model.backbone[1].training
