"""Program: capture, run, train/eval flags, save/load, counting, verification."""

import pytest
import torch
import torchvision

from prunefx.graph import (
    CaptureError,
    Program,
    ProgramFileError,
    PrunefxError,
    VerificationError,
    capture,
    count,
    verify,
)
from prunefx.graph.analysis_record import LinearizeRecord
from prunefx.graph.attributes import set_tensor


@pytest.fixture(scope="module")
def resnet18_program():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    return model, capture(model, torch.randn(2, 3, 64, 64), name="resnet18")


def test_capture_matches_eager_model(resnet18_program):
    model, program = resnet18_program
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), atol=1e-5)
    assert program.output_shapes == [(2, 10)]


def test_capture_does_not_share_weights_with_the_model(resnet18_program):
    model, program = resnet18_program
    assert program.module.state_dict()["conv1.weight"].data_ptr() != model.conv1.weight.data_ptr()


def test_capture_error_names_model_and_cause():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum().item() > 0:  # data-dependent control flow cannot be exported
                return x * 2
            return x

    with pytest.raises(CaptureError, match="'DataDependent'"):
        capture(DataDependent(), torch.randn(1, 3))


def test_train_flips_batchnorm_and_dropout_flags_and_updates_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Dropout(0.5), torch.nn.LazyLinear(4))
    model(torch.randn(1, 3, 8, 8))
    program = capture(model.eval(), torch.randn(4, 3, 8, 8))
    assert not program.training
    program.train()
    assert program.training
    flags = [n.args[5] for n in program.graph.nodes if "batch_norm" in str(n.target)]
    flags += [n.args[2] for n in program.graph.nodes if "dropout" in str(n.target)]
    assert flags == [True, True]

    statistics = program.module.state_dict()["1.running_mean"].clone()
    weights = {k: v.clone() for k, v in program.named_parameters()}
    optimiser = torch.optim.SGD(program.parameters(), lr=0.1)
    for _ in range(3):
        loss = program(torch.randn(4, 3, 8, 8)).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert not torch.equal(statistics, program.module.state_dict()["1.running_mean"])
    assert all(not torch.equal(weights[k], v) for k, v in program.named_parameters())

    program.eval()
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(program(x), program(x)), "eval mode must be deterministic (no dropout)"


def test_checking_or_loading_a_training_program_leaves_every_batch_norm_statistic_as_it_was(tmp_path):
    """Shape propagation (verify, every Pipeline check, the shape check of a load) ran the counter's += 1 on the
    real tensor."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).train()
    model(torch.randn(2, 3, 8, 8))  # a counter at 1, running statistics moved: values a load must keep
    program = capture(model, torch.randn(2, 3, 8, 8))
    before = {name: tensor.clone() for name, tensor in model.named_buffers()}
    verify(program, reexport=False)
    program._propagated = None  # propagate again even though nothing changed
    program.refresh_meta()
    loaded = Program.load(program.save(tmp_path / "training.pt2"))
    for buffers in (dict(program.module.named_buffers()), dict(loaded.module.named_buffers())):
        assert before.keys() == buffers.keys() and all(torch.equal(before[name], buffers[name]) for name in before)


def test_a_program_counts_batches_as_its_batch_norms_would_in_each_mode(tmp_path):
    """Captured in training mode, the graph holds `num_batches_tracked += 1`; in eval mode an nn.BatchNorm counts
    nothing, and neither may the Program (a run, an evaluation or a check of an eval-mode Program changed it).
    The oracle: the eager module given the same calls in the same modes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).train()
    program = capture(model, torch.randn(2, 3, 8, 8))

    def counters():
        return [int(program.module.state_dict()["1.num_batches_tracked"]), int(model[1].num_batches_tracked)]

    for mode in (False, True, False):
        program.train(mode)
        model.train(mode)
        for _ in range(2):
            x = torch.randn(2, 3, 8, 8)
            with torch.no_grad():
                program(x)
                model(x)
        assert counters()[0] == counters()[1], mode
    assert counters() == [2, 2]
    verify(program)
    loaded = Program.load(program.save(tmp_path / "eval.pt2"))
    with torch.no_grad():
        loaded(torch.randn(2, 3, 8, 8))
    assert int(loaded.module.state_dict()["1.num_batches_tracked"]) == 2 and not loaded.training
    with program.train().evaluating():  # eval inside, the training increments back after
        program(torch.randn(2, 3, 8, 8))
    program(torch.randn(2, 3, 8, 8))
    assert counters()[0] == 3


def test_in_place_dropout_captured_in_training_is_switched_off_by_eval():
    """nn.Dropout(inplace=True) (torchvision's MobileNetV3 and EfficientNet heads) captures as aten.dropout_: the
    eval Program drew a fresh mask from torch's generator on every call, and computed what the model's eval did
    not. The oracle: the model itself in eval mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5, inplace=True),
                                torch.nn.Linear(32, 4)).train()
    x = torch.randn(2, 16)
    program = capture(model, x)
    assert any(node.target is torch.ops.aten.dropout_.default for node in program.graph.nodes)
    assert program.training
    program.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        assert not program.training and torch.equal(program(x), model.eval()(x))
    assert torch.equal(state, torch.get_rng_state())


def test_a_file_saved_with_an_eval_program_still_counting_batches_loads_in_eval_mode_counting_none(tmp_path):
    """Files written before the counters followed the mode hold `num_batches_tracked += 1` in an eval graph."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).train()
    program = capture(model, torch.randn(2, 3, 8, 8)).eval()
    counter = next(node for node in program.graph.nodes if node.target is torch.ops.aten.add_.Tensor)
    counter.args = (counter.args[0], 1)  # as such a file holds it
    program.module.recompile()
    loaded = Program.load(program.save(tmp_path / "old.pt2"))
    assert not loaded.training
    with torch.no_grad():
        loaded(torch.randn(2, 3, 8, 8))
    assert int(loaded.module.state_dict()["1.num_batches_tracked"]) == 0


class _FusedAttention(torch.nn.Module):
    """Attention dropout as timm and Hugging Face pass it: a probability while training, 0 in eval."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.5 if self.training else 0.0)


def test_fused_attention_drops_out_only_in_training_mode_through_clones_and_files(tmp_path):
    """A graph captured in training mode holds fused attention's dropout probability as a number: eval makes it
    0, training gives back the captured one, across a clone and a file saved in eval mode. The oracle: the eager
    module in eval mode (deterministic), and two training runs that differ."""
    torch.manual_seed(0)
    model = _FusedAttention().train()
    x = torch.randn(2, 5, 8)
    program = capture(model, x)
    assert program.training
    with torch.no_grad():
        expected = model.eval()(x)
        for each in (program.eval(), program.clone(), Program.load(program.save(tmp_path / "eval.pt2"))):
            assert not each.training
            torch.testing.assert_close(each(x), expected)
            each.train()
            assert each.training and not torch.equal(each(x), each(x))


class _AlwaysDropping(_FusedAttention):
    """Code that drops out whatever the mode: random even in eval."""

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.dropout(torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.5),
                                           0.25, training=True)


def test_a_model_that_drops_out_in_eval_mode_is_said_once_and_its_program_s_eval_does_not(caplog):
    torch.manual_seed(0)
    model = _AlwaysDropping().eval()
    x = torch.randn(2, 5, 8)
    with caplog.at_level("WARNING", logger="prunefx"):
        program = capture(model, x, name="always dropping")
        capture(model, x, name="always dropping")  # captured again (a write-back's dense copy): not said again
        capture(_FusedAttention().eval(), x, name="dropping in training only")
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and said[0].startswith("always dropping: 2 operator(s) keep their training behaviour")
    assert "aten.scaled_dot_product_attention" in said[0] and "aten.dropout" in said[0]
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # the user's model: random in eval
        assert program.training and not program.eval().training and torch.equal(program(x), program(x))


def test_a_program_and_its_clone_hold_example_inputs_of_their_own():
    """Like the weights: the caller reusing an input buffer must not change what a Program's checks run on."""
    x = torch.randn(2, 8)
    program = capture(torch.nn.Linear(8, 4).eval(), x)
    clone = program.clone()
    expected = x.clone()
    x.mul_(0)
    clone.example_inputs[0].add_(1)
    assert torch.equal(program.example_inputs[0], expected)
    assert torch.equal(clone.example_inputs[0], expected + 1)


def test_save_load_reproduces_outputs_bit_for_bit(resnet18_program, tmp_path):
    _, program = resnet18_program
    program.analysis.linearize = LinearizeRecord(blends={"blend_0": "layer1"}, ramp=0.25)
    path = program.save(tmp_path / "model.pt2")
    loaded = Program.load(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), program(x))
    assert loaded.name == "resnet18"
    assert loaded.analysis == program.analysis  # typed records come back typed
    assert loaded.analysis.linearize.blends == {"blend_0": "layer1"} and loaded.analysis.sparsity is None
    assert loaded.output_shapes == program.output_shapes
    assert [tuple(t.shape) for t in loaded.example_inputs] == [(2, 3, 64, 64)]


def test_a_file_loaded_and_saved_again_does_not_grow_and_computes_as_the_model(tmp_path):
    """Saving re-exports the graph, and each re-export nested every node's `from_node` one level deeper and put one
    more `L__self__` before its nn_module_stack keys: model.pt2 grew with every load-save cycle (prune chains)."""
    shared = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())

    class Twice(torch.nn.Module):  # a module called twice: its second call's stack key ends in `@1`
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.head = torch.nn.Conv2d(3, 8, 3, padding=1), shared, torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.block(self.block(self.stem(x))).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Twice().eval(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    captured = capture(model, x)
    path = captured.save(tmp_path / "0.pt2")
    sizes = [path.stat().st_size]
    for cycle in range(1, 4):
        program = Program.load(path)
        path = program.save(tmp_path / f"{cycle}.pt2")
        sizes.append(path.stat().st_size)
    assert max(sizes) - min(sizes) < 100, sizes  # was about 3.4 kB (8 %) more on every cycle

    def stacks(graph):
        return [node.meta.get("nn_module_stack") for node in graph.nodes if node.op == "call_function"]

    loaded = Program.load(path)
    assert stacks(loaded.graph) == stacks(captured.graph)  # module paths and call numbers, keys as captured
    assert any(key.endswith("@1") for stack in stacks(loaded.graph) for key in stack or {})
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)


def test_a_program_off_the_cpu_is_saved_from_a_cpu_copy_and_stays_as_it_was(resnet18_program, tmp_path,
                                                                              monkeypatch):
    """The copy's route, taken here on the CPU (tests/test_made_on_the_model_device.py takes it from a GPU)."""
    _, program = resnet18_program
    exported = program.export()
    monkeypatch.setattr(Program, "_off_cpu", lambda self: True)
    loaded = Program.load(program.save(tmp_path / "model.pt2"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), program(x))
    assert program.export() is exported  # the Program's own export, untouched


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_reloaded_programs_half_precision_example_inputs_are_random_not_zeros(tmp_path, dtype):
    """The example inputs are drawn again on load (N(0, 1), seed 0): a bfloat16 one came back all zeros, and the
    parity checks that run on them compared zeros."""
    module = torch.nn.Sequential(torch.nn.Linear(8, 4)).to(dtype).eval()
    program = capture(module, torch.randn(2, 8, dtype=dtype))
    (x,) = Program.load(program.save(tmp_path / "half.pt2")).example_inputs
    assert x.dtype == dtype and x.shape == (2, 8)
    assert 0.3 < float(x.float().std()) < 3.0


def test_loading_either_kind_of_archive_leaves_the_random_state_and_draws_the_same_inputs(tmp_path):
    """Inputs come from a generator of the load's own, whether prunefx.json records them or, in an archive
    torch.export.save wrote, the placeholders say them."""
    program = capture(torch.nn.Linear(8, 4).eval(), torch.randn(2, 8))
    ours = program.save(tmp_path / "ours.pt2")
    plain = tmp_path / "plain.pt2"
    torch.export.save(program.to_exported(), plain)
    state = torch.get_rng_state()
    inputs = [Program.load(path).example_inputs[0] for path in (ours, plain, plain)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(inputs[1], inputs[2]) and torch.equal(inputs[0], inputs[1])


@pytest.mark.parametrize("given, kept", [
    (" resnet18 ", "resnet18"), ("line1\nline2", "line1\\nline2"), ("modèle", "modèle"), ("x" * 250, "x" * 200),
    ("x" * 199 + " y", "x" * 199),  # a cut that ends on a space: load would strip it
])
def test_a_programs_name_is_kept_as_a_saved_file_reads_it_back(tmp_path, given, kept):
    """load strips, escapes and shortens a file's name: a Program keeps it that way from the start, so that
    what save writes is what load returns."""
    program = capture(torch.nn.Linear(8, 4).eval(), torch.randn(2, 8), name=given)
    assert program.name == kept
    assert Program.load(program.save(tmp_path / "named.pt2")).name == kept


@pytest.mark.parametrize("shape", [(0, 8), (2, 0)])
def test_an_example_input_without_elements_is_refused(shape):
    # captured, a batch of 0 later divided by zero in channel selection and failed inside fold_batchnorm
    with pytest.raises(CaptureError, match=f"shape {shape[0]}x{shape[1]} holds no elements"):
        capture(torch.nn.Linear(8, 4).eval(), torch.randn(*shape))


def test_a_blank_name_is_refused_before_anything_runs():
    with pytest.raises(CaptureError, match="name must be non-empty text"):
        capture(torch.nn.Linear(8, 4).eval(), torch.randn(2, 8), name="   ")
    program = capture(torch.nn.Linear(8, 4).eval(), torch.randn(2, 8), name="linear")
    with pytest.raises(PrunefxError, match="name must be non-empty text"):
        program.name = "\t"
    assert program.name == "linear"


def test_node_names_a_pass_gave_come_back_from_a_saved_file(tmp_path):
    """torch.export names nodes afresh (`conv2d_default_1` came back as `conv2d_1`): a distillation's feature loss
    or a layer kept in float, named before a save, found nothing after it."""
    from prunefx.passes.merge_blocks import merge_blocks
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                                torch.nn.Identity(), torch.nn.Conv2d(8, 4, 1)).eval()
    program = capture(model, torch.randn(1, 3, 8, 8))
    relu = next(node for node in program.graph.nodes if node.target is torch.ops.aten.relu.default)
    relu.replace_all_uses_with(relu.args[0])  # a linearised block: the merge makes a node of its own
    program.graph.erase_node(relu)
    program.recompile()
    merged = merge_blocks(program).program
    names = [node.name for node in merged.graph.nodes if node.op == "call_function"]
    assert any("default" in name for name in names)  # a name torch.export would not give
    loaded = Program.load(merged.save(tmp_path / "merged.pt2"))
    assert [node.name for node in loaded.graph.nodes if node.op == "call_function"] == names
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), merged(x))


def test_a_program_a_load_could_not_remake_is_not_saved(tmp_path):
    """A load makes inputs of the recorded dtypes: a complex input was written, then the file was refused."""
    class Magnitude(torch.nn.Module):
        def forward(self, x):
            return x.abs()

    program = capture(Magnitude(), torch.randn(1, 4, dtype=torch.complex64))
    with pytest.raises(PrunefxError, match="an input of dtype torch.complex64, which a load cannot make"):
        program.save(tmp_path / "complex.pt2")
    assert not list(tmp_path.iterdir())


class _MaskedSum(torch.nn.Module):
    """Reads a boolean mask and integer indices: a mask of zeros (all False) leaves nothing to average."""

    def forward(self, x, mask, index):
        picked = x[:, index]
        return (picked * mask).sum(dim=1) / mask.sum(dim=1)


def test_integer_and_boolean_example_inputs_come_back_as_they_were(tmp_path):
    x, mask, index = torch.randn(2, 6), torch.tensor([[True, False] * 2] * 2), torch.tensor([5, 0, 3, 1])
    program = capture(_MaskedSum(), (x, mask, index))
    loaded = Program.load(program.save(tmp_path / "masked.pt2"))
    _, mask_back, index_back = loaded.example_inputs
    assert torch.equal(mask_back, mask) and torch.equal(index_back, index)
    assert torch.isfinite(loaded(*loaded.example_inputs)).all()


def test_a_plain_export_archive_with_an_integer_input_loads(tmp_path):
    # torch.export.save's own archive carries no record: integer inputs are made as zeros, not drawn (randn
    # refused the dtype, and the file with it)
    exported = torch.export.export(_MaskedSum(), (torch.randn(2, 6), torch.ones(2, 4, dtype=torch.bool),
                                                  torch.tensor([5, 0, 3, 1])))
    torch.export.save(exported, tmp_path / "plain.pt2")
    _, mask, index = Program.load(tmp_path / "plain.pt2").example_inputs
    assert mask.dtype == torch.bool and index.dtype == torch.int64 and not index.any()


def test_a_record_a_load_would_refuse_is_not_written(tmp_path):
    program = capture(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1)), torch.randn(1, 1, 4, 4))
    program.normalisation = ((0.5,), (0.0,))  # a std of 0: a load refuses it
    with pytest.raises(PrunefxError, match="cannot save .*std"):
        program.save(tmp_path / "model.pt2")
    assert not list(tmp_path.iterdir())


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ProgramFileError, match="no such program file"):
        Program.load(tmp_path / "missing.pt2")
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(ProgramFileError, match="not a .pt2 archive"):
        Program.load(corrupt)


def test_counter_matches_hand_computed_macs_and_params():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 16, 5))
    program = capture(model.eval(), torch.randn(1, 3, 4, 4))
    cost = count(program)
    conv = 8 * 4 * 4 * (3 * 3 * 3)
    linear = 5 * 8 * 16
    assert cost.macs == conv + linear
    assert cost.params == (8 * 3 * 9 + 8) + (8 * 16 * 5 + 5)


def test_counter_counts_attention_and_batched_matmul():
    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            scores = torch.bmm(q, k.transpose(1, 2))
            return torch.nn.functional.scaled_dot_product_attention(q, k, v) + torch.bmm(scores.softmax(-1), v)

    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    program = capture(Attention(), (q, k, v))
    bmm_scores, bmm_values = 2 * 5 * 7 * 8, 2 * 5 * 8 * 7
    sdpa = 2 * 5 * 7 * (8 + 8)
    assert count(program).macs == bmm_scores + bmm_values + sdpa


def test_verify_detects_changed_output_shape(resnet18_program):
    _, program = resnet18_program
    broken = program.clone()
    broken.output_shapes = [(2, 11)]
    with pytest.raises(VerificationError, match="output shapes"):
        verify(broken)
    verify(program)  # the untouched program is valid


def test_an_exported_program_goes_in_and_comes_back_out_untouched():
    import copy

    import prunefx
    from prunefx.passes import fold_batchnorm, remove_channels

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    weights = copy.deepcopy(model.state_dict())
    ep = torch.export.export(model, (x,))
    ep_output = ep.module()(x)

    program = prunefx.capture(ep).eval()
    assert program.name == "exported" and tuple(program.example_inputs[0].shape) == (1, 3, 64, 64)
    result = prunefx.Pipeline([fold_batchnorm, (remove_channels, {"macs": 0.5, "round_to": 8})]).run(program)
    pruned_ep = result.program.to_exported()
    assert isinstance(pruned_ep, torch.export.ExportedProgram)
    assert torch.equal(pruned_ep.module()(x), result.program(x))
    torch.export.export(pruned_ep.module(), (x,))  # re-exports
    with torch.no_grad():  # later rewrites of the Program do not reach the ExportedProgram handed out
        next(result.program.module.parameters()).zero_()
    assert not torch.equal(pruned_ep.module()(x), result.program(x))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(ep.module()(x), ep_output)


def test_capture_of_an_exported_program_without_inputs_says_what_to_give():
    import prunefx

    ep = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),))
    ep.example_inputs = None
    with pytest.raises(prunefx.CaptureError, match="carries no example inputs"):
        prunefx.capture(ep)
    assert prunefx.capture(ep, torch.randn(1, 4)).output_shapes == [(1, 2)]


def test_capture_of_an_exported_program_with_a_dynamic_batch_says_the_sizes_it_fixes(caplog):
    import prunefx

    batch = torch.export.Dim("batch", min=1, max=8)
    ep = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(3, 4),), dynamic_shapes=({0: batch},))
    with caplog.at_level("WARNING", logger="prunefx"):
        program = prunefx.capture(ep)
    said = [record.getMessage() for record in caplog.records if "dynamic input sizes" in record.getMessage()]
    assert len(said) == 1 and "input 0 dim 0" in said[0] and "at the example inputs' 3x4" in said[0]
    assert program.output_shapes == [(3, 2)]
    caplog.clear()
    with caplog.at_level("WARNING", logger="prunefx"):  # a static ExportedProgram: nothing to say
        prunefx.capture(torch.export.export(torch.nn.Linear(4, 2), (torch.randn(3, 4),)))
    assert not [record for record in caplog.records if "dynamic input sizes" in record.getMessage()]


@pytest.mark.parametrize("analysis, message", [
    ({"note": {}}, "unknown analysis record 'note'"),
    ({"sparsity": {"pattern": "2:4"}}, "analysis record 'sparsity' is incomplete"),
    ({"linearize": {"blends": {}, "colour": 1}}, "analysis record 'linearize' has unknown field 'colour'"),
    ({"sparsity": [1, 2]}, "analysis record 'sparsity' must be a JSON object"),
])
def test_a_saved_analysis_record_of_the_wrong_form_is_refused(resnet18_program, tmp_path, analysis, message):
    """The record is data read from a file: a field this version does not know, or of the wrong form, is
    one ProgramFileError naming it, not a Program whose later passes read garbage."""
    _, program = resnet18_program
    with pytest.raises(ProgramFileError, match=message):
        Program.load(_with_analysis(program.save(tmp_path / "model.pt2"), analysis, tmp_path / "forged.pt2"))


def test_a_program_saved_with_the_retired_analysis_fields_loads(resnet18_program, tmp_path):
    """prunefx.json of a Program saved before channel_pruning and distillation were retired
    (graph/analysis_record.RETIRED): it loads, without them."""
    _, program = resnet18_program
    old = {"channel_pruning": {"macs_after": 1, "target": {"met": True}}, "distillation": {"steps": 60},
           "linearize": {"blends": {"blend_0": "layer1"}}}
    loaded = Program.load(_with_analysis(program.save(tmp_path / "model.pt2"), old, tmp_path / "old.pt2"))
    assert loaded.analysis.to_json() == {"linearize": {"blends": {"blend_0": "layer1"}, "ramp": 0.5, "stripped": {}}}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), program(x))


def _with_analysis(path, analysis: dict, forged):
    """A copy of the saved Program at `path` whose prunefx.json holds `analysis` as its record."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("prunefx.json"):
                record = json.loads(data)
                record["analysis"] = analysis
                data = json.dumps(record).encode()
            target.writestr(item, data)
    return forged


def test_a_weight_standardising_batch_norm_is_not_a_training_switch():
    """F.batch_norm(w, None, None, training=True) standardises conv weights (BiT, NFNet): it has no
    running statistics and always uses batch statistics, so eval() must leave it alone (flipping it
    makes the model fail with 'running_mean must be defined in evaluation mode')."""
    class StandardisedConv(torch.nn.Conv2d):
        def forward(self, x):
            weight = torch.nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                                                    training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
            return torch.nn.functional.conv2d(x, weight, self.bias, padding=1)

    torch.manual_seed(0)
    model = torch.nn.Sequential(StandardisedConv(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    program = capture(model, x)
    assert not program.training  # the real batch norm is in eval mode; the standardisation is not a mode
    program.train()
    assert program.training
    program.eval()
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), atol=1e-5)


def _small_program():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    return capture(model.eval(), torch.randn(2, 3, 8, 8))


def test_shape_metadata_is_propagated_again_only_when_something_it_reads_changed(monkeypatch):
    """refresh_meta keeps the metadata of an unchanged graph (verify after a recompile), and propagates again
    after a rewrite, a node without metadata, or a tensor of another shape."""
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    program = _small_program()
    propagations = []
    real = FakeTensorProp.propagate
    monkeypatch.setattr(FakeTensorProp, "propagate", lambda self, *a: propagations.append(1) or real(self, *a))
    program.refresh_meta()
    verify(program)
    assert len(propagations) == 1  # the second look at the same graph reused the first

    conv = next(n for n in program.graph.nodes if n.target is torch.ops.aten.conv2d.default)
    with program.graph.inserting_after(conv):
        doubled = program.graph.call_function(torch.ops.aten.mul.Tensor, (conv, 2.0))
    conv.replace_all_uses_with(doubled, delete_user_cb=lambda user: user is not doubled)
    program.recompile()
    assert len(propagations) == 2 and tuple(doubled.meta["val"].shape) == (2, 8, 8, 8)  # the rewrite is seen
    doubled.meta.clear()  # as a node built anew with the same text: no metadata yet
    program.refresh_meta()
    assert len(propagations) == 3 and "val" in doubled.meta  # it is filled in

    last = [n for n in program.graph.nodes if n.target is torch.ops.aten.conv2d.default][-1]
    for arg, shape in ((last.args[1], (6, 8, 1, 1)), (last.args[2], (6,))):
        set_tensor(program.module, arg.target, torch.zeros(shape))
    program.refresh_meta()
    assert len(propagations) == 4 and tuple(last.meta["val"].shape) == (2, 6, 8, 8)  # a tensor of another shape
