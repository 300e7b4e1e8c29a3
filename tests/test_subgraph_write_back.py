"""The write-back's fallback: a module whose own code cannot express its pruned widths, made from the Program.

Oracles: the pruned Program's outputs (the write-back must equal them on inputs it never saw), the dense
model's parameter names, and PyTorch's own autograd and batch-norm statistics for training."""

from __future__ import annotations

import collections
import copy
import io

import pytest
import torch
from torch import nn

from prunefx.graph import capture
from prunefx.interop import subgraph_fallback
from prunefx.interop.subgraph_call import ReturnedLike
from prunefx.interop.subgraph_module import SubgraphError, SubgraphModule, replace_by_subgraph
from prunefx.interop.write_back import WriteBackError, to_module
from prunefx.passes.remove_channels import remove_channels


class HalvesBlock(nn.Module):
    """C2f-like: the first convolution's output cut into two equal halves by `chunk`, which its forward fixes."""

    def __init__(self):
        super().__init__()
        self.cv1 = nn.Sequential(nn.Conv2d(8, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.m = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.cv2 = nn.Conv2d(48, 8, 1)
        self.tag = "kept"  # a plain attribute of the kind libraries keep on their blocks

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat((a, b, self.m(b)), 1))


class Net(nn.Module):
    def __init__(self, shared: bool = False):
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 1), HalvesBlock(), nn.Conv2d(8, 4, 1)
        self.shared = shared

    def forward(self, x):
        y = self.block(self.stem(x))
        return self.head(self.block(y) if self.shared else y)


def _by_image(program, batch: torch.Tensor) -> torch.Tensor:
    """The Program's outputs (captured at batch 1) on each image of `batch`, one call each: the oracle for a
    module written back for any batch."""
    return torch.cat([program(batch[i:i + 1]) for i in range(len(batch))])


def _pruned(shared: bool = False):
    torch.manual_seed(0)
    model = Net(shared).eval()
    with torch.no_grad():  # the first half's channels weak: the halves are pruned to different widths
        model.block.cv1[0].weight[:16] *= 0.01
    program = capture(model, torch.rand(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.35, "importance": "l2"})
    return model, program


def _pruned_and_written(model: nn.Module, example: torch.Tensor, macs: float):
    """The model captured on `example`, pruned to `macs` by l2 at any width, and written back."""
    program = capture(model, example).eval()
    remove_channels(program, config={"macs": macs, "importance": "l2", "round_to": 1, "strict": False})
    return program, to_module(program, model)


def test_unequal_halves_write_back_as_the_pruned_subgraph():
    model, program = _pruned()
    state = program.module.state_dict()
    kept, second = state["block.cv1.0.weight"].shape[0], state["block.m.0.weight"].shape[1]
    assert kept != 2 * second  # unequal halves: the block's own chunk(2) cannot give them

    written = to_module(program, model)
    assert isinstance(written.block, SubgraphModule) and written.block.tag == "kept"
    assert [name for name, _ in written.named_parameters()] == [name for name, _ in model.named_parameters()]
    assert written.state_dict().keys() == model.state_dict().keys()
    other = torch.rand(3, 3, 8, 8)  # another batch size than the capture's
    with torch.no_grad():
        expected = _by_image(program, other)
        assert torch.allclose(written(other), expected, rtol=1e-5, atol=1e-6)
        for again in (copy.deepcopy(written), _saved_and_loaded(written)):
            assert torch.allclose(again(other), expected, rtol=1e-5, atol=1e-6)


def test_the_subgraph_module_trains():
    model, program = _pruned()
    written = to_module(program, model).train()
    batch_norm = written.block.cv1[1]
    before = batch_norm.running_mean.clone()
    written(torch.rand(4, 3, 8, 8)).square().mean().backward()
    assert not torch.equal(batch_norm.running_mean, before)  # the child's own forward, in training mode
    assert written.block.cv1[0].weight.grad is not None and written.block.cv1[0].weight.grad.abs().sum() > 0


def test_a_block_called_twice_is_refused_in_one_line():
    model, program = _pruned(shared=True)
    with pytest.raises(WriteBackError) as error:
        to_module(program, model)
    message = str(error.value)
    assert "\n" not in message and "module 'block'" in message and "2 times" in message


def _saved_and_loaded(module: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.slow
def test_inception_next_writes_back_without_a_resizer():
    """timm's InceptionNeXt splits its token mixer's input at stored `split_indexes` (random weights): pruning
    cuts the equal parts apart, and the list is set whole from the split the program makes."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("inception_next_atto", pretrained=False, num_classes=10).eval()
    program = capture(model, torch.rand(1, 3, 64, 64)).eval()
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 8})
    written = to_module(program, model)
    assert not any(isinstance(module, SubgraphModule) for module in written.modules())
    splits = [node.args[1] for node in program.graph.nodes if node.target == torch.ops.aten.split_with_sizes.default]
    mixers = [module for module in written.modules() if hasattr(module, "split_indexes")]
    assert [list(mixer.split_indexes) for mixer in mixers] == splits
    assert any(len(set(parts)) > 1 for parts in splits)  # equal parts cut apart: no size by size matching
    assert written.state_dict().keys() == model.state_dict().keys()
    other = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(written(other), program(other), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_volo_writes_back_without_a_resizer():
    """timm's VOLO: OutlookAttention reshapes with the head dim computed from its input's width, which the
    pruning cut apart from its values' width; its subgraph holds the pruned sizes (random weights)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("volo_d1_224", pretrained=False, num_classes=10, img_size=64).eval()
    program = capture(model, torch.rand(1, 3, 64, 64)).eval()
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 8})
    written = to_module(program, model)
    assert isinstance(written.get_submodule("network.0.0.attn"), SubgraphModule)
    assert written.state_dict().keys() == model.state_dict().keys()
    other = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = _by_image(program, other)
        assert torch.allclose(written(other), expected, rtol=1e-4, atol=1e-5)


class ScaledHalvesBlock(HalvesBlock):
    """Called with a constant besides its input, as window partitions take their window size."""

    def forward(self, x, scale=1.0, bias=None):
        return super().forward(x) * scale


class ScaledNet(Net):
    def forward(self, x):
        return self.head(self.block(self.stem(x), 2.0, bias=None))


def test_a_block_called_with_constants_besides_its_input_is_made_from_its_subgraph():
    torch.manual_seed(0)
    model = ScaledNet()
    model.block = ScaledHalvesBlock()
    model.eval()
    with torch.no_grad():
        model.block.cv1[0].weight[:16] *= 0.01
    program = capture(model, torch.rand(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.35, "importance": "l2"})
    written = to_module(program, model)
    x = torch.rand(1, 3, 8, 8)
    assert isinstance(written.block, SubgraphModule)
    with torch.no_grad():  # the oracle: the Program, on an input it never saw
        torch.testing.assert_close(written(x), program(x))
    with pytest.raises(Exception, match="reads one tensor, and its caller passes more"):
        written.block(torch.rand(1, 8, 8, 8), torch.ones(1))


class WindowAttention(nn.Module):
    """Attention within windows, as davit, hiera and swin write it: the windows of every image batched together
    (B * n of them, a literal size in the graph), put back after; a relative bias reshaped from a parameter and a
    window mask made from the input's shape (sizes of their own, which do not follow the batch); a dropout of 0."""

    def __init__(self, dim: int = 16, heads: int = 2, window: int = 4):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.heads, self.window = heads, window
        self.bias = nn.Parameter(torch.randn(heads * window ** 4))

    def forward(self, x):  # (B, H, W, C)
        batch, height, width, dim = x.shape
        side, area = self.window, self.window ** 2
        windows = x.view(batch, height // side, side, width // side, side, dim).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, area, dim)
        count = windows.shape[0]
        q, k, v = self.qkv(windows).reshape(count, area, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) + self.bias.view(self.heads, area, area)
        # Swin's window mask: made in the input's dtype, of sizes of its own (zero: unshifted windows)
        mask = x.new_zeros(height, width).view(height // side, side, width // side, side).permute(0, 2, 1, 3)
        mask = mask.reshape(-1, area)
        scores = scores.view(batch, -1, self.heads, area, area) + mask[None, :, None, :, None]
        weights = nn.functional.dropout(scores.view(count, self.heads, area, area).softmax(-1), p=0.0,
                                        training=self.training)  # torchvision's attention dropout of 0
        mixed = self.proj((weights @ v).transpose(1, 2).reshape(count, area, dim))
        mixed = mixed.view(batch, height // side, width // side, side, side, dim).permute(0, 1, 3, 2, 4, 5)
        return x + mixed.reshape(batch, height, width, dim)


class WindowNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.mixer, self.head = nn.Conv2d(3, 16, 2, stride=2), WindowAttention(), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.mixer(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))


def test_window_attention_writes_back_for_any_batch():
    """The windows' batch (B * n) follows the input's batch in the written-back module, the bias table's size
    does not; oracle: the Program, image by image, on a batch it never saw."""
    torch.manual_seed(0)
    model = WindowNet().eval()
    program = capture(model, torch.rand(1, 3, 16, 16)).eval()
    remove_channels(program, config={"macs": 0.6, "importance": "l2", "heads": "dims", "round_to": 1, "strict": False})
    assert program.module.state_dict()["mixer.qkv.weight"].shape[0] < 48  # the attention itself was narrowed
    written = to_module(program, model)
    assert isinstance(written.mixer, SubgraphModule)
    other = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = _by_image(program, other)
        torch.testing.assert_close(written(other), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["davit_tiny", "hiera_tiny_224", "efficientvit_m0"])
def test_window_and_cascaded_attention_models_write_back(name):
    """timm models whose blocks batch windows or heads as B * n (random weights, zero-initialised layers
    randomised so that the comparison is not vacuous); oracle: the Program, image by image."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1 and not parameter.any():
                nn.init.normal_(parameter, std=0.02)
    program = capture(model, torch.rand(1, 3, 224, 224)).eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 8, "strict": False})
    written = to_module(program, model)
    assert any(isinstance(module, SubgraphModule) for module in written.modules())
    other = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = _by_image(program, other)
        torch.testing.assert_close(written(other), expected, rtol=1e-4, atol=1e-5)


class GridBlock(nn.Module):
    """A constant made from the input's shape alone (no batch in it), reshaped: its sizes are its own."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        grid = x.new_ones(3, 4).cumsum(1).reshape(12).view(3, 4).mean(0)
        return self.linear(x) + grid.view(1, 4, 1)


def test_a_constant_made_from_the_inputs_shape_keeps_its_sizes_for_any_batch():
    """Oracle: the eager module on a batch the capture never saw."""
    model = nn.Sequential(GridBlock()).eval()
    program = capture(model, torch.randn(1, 4, 8)).eval()
    written = copy.deepcopy(model)
    replace_by_subgraph(program, written, "0")
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(written(x), model(x))


class DropsAttention(nn.Module):
    """Attention dropout as Hugging Face keeps it: a float attribute, no nn.Dropout module."""

    def __init__(self):
        super().__init__()
        self.qkv, self.attention_dropout = nn.Linear(8, 24), 0.1

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attention_dropout if self.training else 0.0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attention_dropout_baked_into_a_subgraph_is_refused_in_either_mode_of_the_program(mode):
    """Captured in training, the attention drops out; an eval Program holds 0 there but its training value
    aside: a subgraph made from either would not drop out when the module trains."""
    model = nn.Sequential(DropsAttention()).train()
    program = getattr(capture(model, torch.randn(2, 4, 8)), mode)()
    with pytest.raises(SubgraphError, match="would not follow the training mode"):
        replace_by_subgraph(program, copy.deepcopy(model), "0")


def _timm_written_back(model: nn.Module, size: int, batch: int = 3):
    """`model` pruned to half its MACs (heads apart from the residual), written back; the Program's outputs on a
    batch it never saw, image by image (the oracle), and the written-back module's."""
    torch.manual_seed(0)
    with torch.no_grad():  # zero-initialised layers randomised: a zero output would make the check vacuous
        for parameter in model.parameters():
            if parameter.dim() > 1 and not parameter.any():
                nn.init.normal_(parameter, std=0.02)
    program = capture(model, torch.rand(1, 3, size, size)).eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 1, "strict": False})
    written = to_module(program, model)
    other = torch.rand(batch, 3, size, size)
    with torch.no_grad():
        return written, _by_image(program, other), written(other)


def test_an_attention_whose_position_mlp_reads_a_buffer_writes_back():
    """timm's relative-position ViT: its attention reshapes to the residual's width, so it is made from its
    subgraph, which calls its position MLP on the coordinates it holds (not an activation); that MLP's own
    dropout is the MLP's, not the fused attention's."""
    relpos = pytest.importorskip("timm.models.vision_transformer_relpos")
    model = relpos.VisionTransformerRelPos(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3,
                                           num_classes=10).eval()
    written, expected, actual = _timm_written_back(model, 32)
    attention = written.blocks[0].attn
    assert isinstance(attention, SubgraphModule)
    assert type(attention.rel_pos.mlp) is type(model.blocks[0].attn.rel_pos.mlp)  # its own class, called as one
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_shifted_windows_split_back_into_images_for_any_batch():
    """timm's Swin V2 (cr): its window attention adds the shift mask per image, viewing its windows' batch
    (B * n) as (B, n); that view follows the input's batch in the written-back module."""
    swin = pytest.importorskip("timm.models.swin_transformer_v2_cr")
    model = swin.SwinTransformerV2Cr(img_size=(32, 32), window_size=4, embed_dim=24, depths=(2, 2),
                                     num_heads=(2, 4), num_classes=10).eval()
    written, expected, actual = _timm_written_back(model, 32)
    assert isinstance(written.stages[0].blocks[1].attn, SubgraphModule)  # the shifted block's attention
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_an_activation_passed_besides_the_input_is_read_from_its_argument():
    """timm's relative-position ViT with one position bias for all blocks: the model computes it once per call
    and passes it to each attention, which is made from its subgraph reading it from that argument."""
    relpos = pytest.importorskip("timm.models.vision_transformer_relpos")
    model = relpos.VisionTransformerRelPos(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3,
                                           shared_rel_pos=True, num_classes=10).eval()
    written, expected, actual = _timm_written_back(model, 32)
    assert isinstance(written.blocks[0].attn, SubgraphModule)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_shared_child_called_with_two_tensors_and_a_size():
    """CoaT: each attention calls the relative-position encoding its stage shares with (q, v, size); the
    subgraph calls it as the dense model's call did, in every block that shares it."""
    coat = pytest.importorskip("timm.models.coat")
    model = coat.CoaT(img_size=32, patch_size=4, embed_dims=(16, 24, 32, 40), serial_depths=(1, 1, 1, 1),
                      num_heads=8, mlp_ratios=(2, 2, 2, 2), parallel_depth=0, num_classes=10).eval()
    written, expected, actual = _timm_written_back(model, 32)
    assert isinstance(written.serial_blocks1[0].factoratt_crpe, SubgraphModule)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_block_passed_a_global_query_by_its_stage_writes_back():
    """GC ViT: every block is passed its stage's global query (one per image, its windows' batch many times
    that); the global ones read it for any batch, the local ones ignore it."""
    gcvit = pytest.importorskip("timm.models.gcvit")
    model = gcvit.GlobalContextVit(img_size=64, window_size=(4, 4, 4, 2), embed_dim=16, depths=(2, 2, 2, 2),
                                   num_heads=(2, 2, 4, 4), num_classes=10).eval()
    written, expected, actual = _timm_written_back(model, 64)
    global_ = written.stages[0].blocks[1]
    assert isinstance(global_.attn, SubgraphModule) and [each.batched for each in global_.attn._passed] == [True]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


class IgnoresItsQuery(nn.Module):
    def __init__(self, reads: bool):
        super().__init__()
        self.reads, self.fc, self.out = reads, nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x, query):
        u, v = self.fc(x).chunk(2, -1)  # equal halves, unequal once pruned: made from its subgraph
        return self.out(torch.cat((u + query if self.reads else u, v.sigmoid()), -1))


def test_an_argument_the_module_ignores_is_taken_and_left_unread():
    """Passed a query it does not read (its dense output does not follow it): the subgraph takes it and leaves
    it unread, whatever a later call passes there, as the module's own code does."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.query, self.block = nn.Linear(4, 8), nn.Linear(4, 8), IgnoresItsQuery(reads=False)

        def forward(self, x):
            return self.block(self.stem(x), self.query(x))

    model = Net().eval()
    with torch.no_grad():
        model.block.fc.weight[:8] *= 0.01
    program = capture(model, torch.randn(1, 4)).eval()
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 1, "strict": False})
    written = to_module(program, model)
    assert isinstance(written.block, SubgraphModule) and [each.read for each in written.block._passed] == [False]
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(written(x), _by_image(program, x))
        h = written.stem(x)
        assert torch.equal(written.block(h, torch.zeros(3, 8)), written.block(h, torch.ones(3, 8)))


class DropsTwice(nn.Module):
    """One dropout module: the fused attention's rate, and called on the output."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj, self.drop = nn.Linear(16, 48), nn.Linear(16, 16), nn.Dropout(0.5)

    def forward(self, x):
        q, k, v = (t.reshape(*x.shape[:2], 2, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=self.drop.p if self.training else 0.0)
        return self.drop(self.proj(o.transpose(1, 2).flatten(2)))


def test_a_dropout_the_module_calls_still_counts_for_its_fused_attention():
    """Oracle: the module's own code, which passes that dropout's rate to the attention in training."""
    model = nn.Sequential(DropsTwice()).eval()
    program = capture(model, torch.randn(1, 6, 16)).eval()
    with pytest.raises(SubgraphError, match="would not follow the training mode"):
        replace_by_subgraph(program, copy.deepcopy(model), "0")


class SharedChildBlock(HalvesBlock):
    """HalvesBlock whose `m` may be another block's."""

    def __init__(self, shared: nn.Module | None = None):
        super().__init__()
        self.m = shared if shared is not None else self.m


def test_a_child_shared_by_two_blocks_reads_its_own_weights_under_either_name():
    """The Program names the shared child's weights under one of its names; either block's call of it reads
    one tensor. Oracle: the Program on an input it never saw."""
    torch.manual_seed(0)
    first = SharedChildBlock()
    model = nn.Sequential(nn.Conv2d(3, 8, 1), first, SharedChildBlock(first.m), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():  # the first halves weigh least: the halves come apart
        for block in model[1:3]:
            block.cv1[0].weight[:16] *= 0.01
    program = capture(model, torch.rand(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.35, "importance": "l2", "round_to": 1, "strict": False})
    written = to_module(program, model)
    assert isinstance(written[1], SubgraphModule) and isinstance(written[2], SubgraphModule)
    other = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = _by_image(program, other)
        torch.testing.assert_close(written(other), expected, rtol=1e-5, atol=1e-6)


class MixesTheBatch(nn.Module):
    """Softmax across the batch, viewed as one sequence (B, D) -> (1, B, D): no batch of images in its 1."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x):
        a, b = self.fc(x).chunk(2, -1)
        return self.out(torch.cat((a, b.reshape(1, x.shape[0], -1).softmax(1).reshape(x.shape[0], -1)), -1))


def test_a_view_that_mixes_the_batch_is_not_taken_for_images_split_from_windows():
    """Captured at batch 2, its (1, 2, n) is not 2 // 2 images: a batch of two examples (4) could not tell."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), MixesTheBatch(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[1].fc.weight[:16] *= 0.01
    program = capture(model, torch.randn(2, 4)).eval()
    remove_channels(program, config={"macs": 0.35, "importance": "l2", "round_to": 1, "strict": False})
    with pytest.raises(WriteBackError, match="on a batch of two inputs"):
        to_module(program, model)


def test_an_attention_made_from_its_subgraph_keeps_the_programs_queries():
    """PVT v2 with one head: its `head_dim` equals the residual width, which pruning changed, so the attribute
    write-back scales its queries to keep the dense scale before its attention is made from its subgraph,
    whose graph keeps that scale itself. Oracle: the Program's tensors, and its outputs bit for bit (random
    weights make attention near uniform: a wrong scale moves the outputs by less than the proof's tolerance)."""
    pvt = pytest.importorskip("timm.models.pvt_v2")
    torch.manual_seed(0)
    model = pvt.PyramidVisionTransformerV2(depths=(2, 2), embed_dims=(32, 64), num_heads=(1, 2), mlp_ratios=(2, 2),
                                           num_classes=10).eval()
    program = capture(model, torch.rand(1, 3, 64, 64)).eval()
    remove_channels(program, config={"macs": 0.5, "round_to": 8, "strict": False})
    written = to_module(program, model)
    assert isinstance(written.stages[0].blocks[0].attn, SubgraphModule)
    mine = written.state_dict()
    assert [name for name, tensor in program.module.state_dict().items()
            if name in mine and not torch.equal(mine[name], tensor)] == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(written(x), program(x))


class ReadsItsTablesBackwards(nn.Module):
    """Reads its second table before its first, both of one shape: the graph lists them in that order."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x, a, b):
        u, v = self.fc(x).chunk(2, -1)  # equal halves, unequal once pruned: made from its subgraph
        return self.out(torch.cat((u + b[..., :1], v * a[..., :1]), -1))


class PassesTables(nn.Module):
    def __init__(self, zeros: bool = False):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(4, 8), ReadsItsTablesBackwards(), nn.Linear(8, 3)
        self.a, self.b = (nn.Parameter(torch.zeros(6, 8) if zeros else torch.randn(6, 8)) for _ in range(2))

    def forward(self, x):
        return self.head(self.block(self.stem(x), self.a * 1, self.b * 1))  # activations made from the tables


def _pruned_tables(zeros: bool = False):
    torch.manual_seed(0)
    model = PassesTables(zeros).eval()
    with torch.no_grad():
        model.block.fc.weight[:8] *= 0.01
    program = capture(model, torch.randn(1, 6, 4)).eval()
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 1, "strict": False})
    return model, program


def test_arguments_are_paired_with_the_values_they_hold_not_their_order():
    """Oracle: the Program, after the tables change (as training would change them)."""
    model, program = _pruned_tables()
    written = to_module(program, model)
    assert isinstance(written.block, SubgraphModule)
    with torch.no_grad():
        for name in ("a", "b"):
            change = torch.randn(6, 8)
            getattr(written, name).add_(change)
            getattr(program.module, name).add_(change)
        x = torch.randn(1, 6, 4)
        torch.testing.assert_close(written(x), program(x), rtol=1e-5, atol=1e-6)


def test_arguments_holding_the_same_values_are_refused():
    """Equal on the example (zero tables), they cannot be told apart: which is which is not guessed."""
    model, program = _pruned_tables(zeros=True)
    with pytest.raises(WriteBackError, match="holds the values of 2 of the tensors"):
        to_module(program, model)


class Limited(nn.Module):
    """A child that takes a limit and a rate besides its input, with defaults the callers do not use."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, limit=1.0, rate=0.0):
        return torch.nn.functional.dropout(self.fc(x).clamp(max=limit), rate, self.training)


class CallsItsChildWithALimit(nn.Module):
    def __init__(self, limit: float, child: nn.Module):
        super().__init__()
        self.limit, self.m, self.fc, self.out = limit, child, nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        u, v = self.fc(x).chunk(2, -1)
        return self.out(torch.cat((u, self.m(v, limit=self.limit, rate=0.5)), -1))


def test_a_child_is_called_with_each_callers_own_arguments():
    """A child shared by two blocks, each calling it with its own limit, and a dropout rate: each block's
    subgraph calls it as its dense call did (oracle: the Program, on inputs large enough to clamp), the child
    itself is not made from one caller's graph, and it drops out in training."""
    torch.manual_seed(0)
    shared = Limited()
    model = nn.Sequential(nn.Linear(4, 8), CallsItsChildWithALimit(5.0, shared), CallsItsChildWithALimit(50.0, shared),
                          nn.Linear(8, 3)).eval()
    with torch.no_grad():
        for block in model[1:3]:
            block.fc.weight[:8] *= 0.01
    program = capture(model, torch.randn(1, 4)).eval()
    remove_channels(program, config={"macs": 0.4, "importance": "l2", "round_to": 1, "strict": False})
    written = to_module(program, model)
    assert isinstance(written[1], SubgraphModule) and isinstance(written[2], SubgraphModule)
    assert type(written[1].m) is Limited and written[1].m is written[2].m
    x = 1000 * torch.randn(3, 4)
    with torch.no_grad():
        expected = _by_image(program, x)
        torch.testing.assert_close(written(x), expected, rtol=1e-5, atol=1e-4)
        written.train()
        assert not torch.equal(written(x), written(x))  # the rate reaches the child: it drops out


class SoftensIn(nn.Module):
    """A child whose call passes a dtype, a plain value a graph holds as a constant."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, dtype=None):
        return self.fc(x.softmax(-1, dtype=dtype))


class PassesADtype(CallsItsChildWithALimit):
    def forward(self, x):
        u, v = self.fc(x).chunk(2, -1)
        return self.out(torch.cat((u, self.m(v, dtype=torch.float32)), -1))


def test_a_child_called_with_a_dtype_is_called_so_by_the_blocks_subgraph():
    """The dtype the block passes its child is kept in the subgraph's call, as a number would be. Oracle: the
    Program on an input it never saw."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), PassesADtype(0.0, SoftensIn()), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[1].fc.weight[:8] *= 0.01
    program, written = _pruned_and_written(model, torch.randn(1, 4), 0.5)
    assert isinstance(written[1], SubgraphModule)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(written(x), _by_image(program, x), rtol=1e-5, atol=1e-6)


class IgnoresItsMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, mask=None):  # taken for a common call, not read
        return self.fc(x).relu()


class MaskedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.m, self.out = nn.Linear(8, 16), IgnoresItsMask(), nn.Linear(16, 8)

    def forward(self, x, mask):
        u, v = self.fc(x).chunk(2, -1)  # equal halves, unequal once pruned: made from its subgraph
        return self.out(torch.cat((u, self.m(v, mask)), -1)).masked_fill(mask[..., None], 0.0)


def test_a_boolean_mask_passed_on_to_a_child_that_ignores_it():
    """The block reads its boolean mask (paired by its values, exactly), and passes it to a child that takes it
    and does not read it: the child's call leaves it out. Oracle: the Program on an input it never saw."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.head = nn.Linear(4, 8), MaskedBlock(), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.block(self.stem(x), x[..., 0] > 0))

    model = Net().eval()
    with torch.no_grad():
        model.block.fc.weight[:8] *= 0.01
    program, written = _pruned_and_written(model, torch.randn(1, 6, 4), 0.5)
    assert isinstance(written.block, SubgraphModule)
    x = torch.randn(1, 6, 4)
    with torch.no_grad():
        torch.testing.assert_close(written(x), program(x), rtol=1e-5, atol=1e-6)


def test_a_block_called_at_two_places_alike_is_one_subgraph():
    """One block object at two places of a Sequential, both calls alike: one graph stands in for both."""
    torch.manual_seed(0)
    shared = HalvesBlock()
    model = nn.Sequential(nn.Conv2d(3, 8, 1), shared, nn.ReLU(), shared, nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        shared.cv1[0].weight[:16] *= 0.01
    program, written = _pruned_and_written(model, torch.rand(1, 3, 8, 8), 0.35)
    assert isinstance(written[1], SubgraphModule) and written[1] is written[3]
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(written(x), program(x), rtol=1e-5, atol=1e-6)


class TokensAndSize(nn.Module):
    """A patch embedding that returns its tokens with the grid's height and width (SegFormer's, HF's)."""

    def __init__(self):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(3, 16, 2, 2), nn.LayerNorm(16)

    def forward(self, x):
        x = self.proj(x)
        _, _, height, width = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class ReducingStage(nn.Module):
    """A stage whose own reshape takes the reduction's width from its tokens' shape (SegFormer's sequence
    reduction): where the two are pruned apart, only the Program's subgraph computes the stage."""

    def __init__(self):
        super().__init__()
        self.embed, self.reduce, self.head = TokensAndSize(), nn.Conv2d(16, 16, 2, 2), nn.Linear(16, 4)

    def forward(self, x):
        tokens, height, width = self.embed(x)
        batch, _, channels = tokens.shape
        grid = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        reduced = self.reduce(grid).reshape(batch, channels, -1)
        return self.head(tokens.mean(1)) + reduced.mean(2).sum(1, keepdim=True)


def test_a_child_returning_its_tokens_with_their_size_is_called_by_the_stages_subgraph():
    torch.manual_seed(0)
    model = nn.Sequential(ReducingStage()).eval()
    with torch.no_grad():  # the reduction's channels weak: pruned further than the tokens
        model[0].reduce.weight.mul_(0.01)
    program = capture(model, torch.rand(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 4, "strict": False})
    state = program.module.state_dict()
    assert state["0.reduce.weight"].shape[0] != state["0.embed.proj.weight"].shape[0]  # the reshape's size rewritten

    written = to_module(program, model)
    assert isinstance(written[0], SubgraphModule) and isinstance(written[0].embed, TokensAndSize)
    other = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(written(other), program.module(other), rtol=1e-5, atol=1e-6)
        assert torch.allclose(_saved_and_loaded(written)(other), program.module(other), rtol=1e-5, atol=1e-6)


class HalvesInHuggingFaceStyle(nn.Module):
    """HalvesBlock as Hugging Face writes its layers: the input named `hidden_states` (callers pass it by name), a
    child named `self`, and a tuple returned with the tensor first."""

    def __init__(self):
        super().__init__()
        self.self = nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU())
        self.m, self.output = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(48, 8, 1)

    def forward(self, hidden_states):
        a, b = self.self(hidden_states).chunk(2, 1)
        return self.output(torch.cat((a, b, self.m(b)), 1)), None


class CallsByName(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 1), HalvesInHuggingFaceStyle(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        features, _ = self.block(hidden_states=self.stem(x))
        return self.head(features)


def test_a_block_called_by_name_with_a_child_named_self_returns_what_its_original_returned():
    torch.manual_seed(0)
    model = CallsByName().eval()
    with torch.no_grad():  # the first half's channels weak: the halves are pruned to different widths
        model.block.self[0].weight[:16] *= 0.01
    program = capture(model, torch.rand(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.35, "importance": "l2"})

    written = to_module(program, model)
    assert isinstance(written.block, SubgraphModule)
    other = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        expected = _by_image(program, other)
        assert torch.allclose(written(other), expected, rtol=1e-5, atol=1e-6)
        features, weights = written.block(hidden_states=written.stem(other))
        assert features.shape == (3, 8, 8, 8) and weights is None
        assert torch.allclose(_saved_and_loaded(written)(other), expected, rtol=1e-5, atol=1e-6)


class HalvesWithPositions(nn.Module):
    """HalvesBlock adding a position table it holds as one row, reshaped to the grid (PVT's patch embedding): the
    reshape's first size is the table's one row, which happens to equal the example's batch."""

    def __init__(self):
        super().__init__()
        self.cv1 = nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU())
        self.m, self.cv2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(48, 8, 1)
        self.positions = nn.Parameter(torch.randn(1, 64, 8))

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat((a, b, self.m(b)), 1)) + self.positions.reshape(1, 8, 8, -1).permute(0, 3, 1, 2)


def test_a_reshape_of_the_blocks_own_one_row_table_keeps_its_row_for_any_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), HalvesWithPositions(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():  # the first half's channels weak: the halves are pruned to different widths
        model[1].cv1[0].weight[:16] *= 0.01
    program = capture(model, torch.rand(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.35, "importance": "l2"})

    written = to_module(program, model)
    assert isinstance(written[1], SubgraphModule)
    other = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(written(other), _by_image(program, other), rtol=1e-5, atol=1e-6)


HalvesOutput = collections.namedtuple("HalvesOutput", "features weights")


class HalvesWithFlag(nn.Module):
    """HalvesBlock returning an output class whose weights only a flag asks for (Hugging Face's
    output_attentions)."""

    def __init__(self):
        super().__init__()
        self.cv1 = nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU())
        self.m, self.cv2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(48, 8, 1)

    def forward(self, x, output_attentions=False):
        a, b = self.cv1(x).chunk(2, 1)
        return HalvesOutput(self.cv2(torch.cat((a, b, self.m(b)), 1)), b.softmax(1) if output_attentions else None)


class FlagNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 1), HalvesWithFlag(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x), output_attentions=False).features)


class Holder:
    """An object that is not a pytree node, holding one of the block's parameters."""

    def __init__(self, tensor):
        self.tensor = tensor


class HalvesWithHolder(HalvesBlock):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), 2.0))

    def forward(self, x):
        return super().forward(x), Holder(self.scale)


class HolderNet(Net):
    def __init__(self):
        super().__init__()
        self.block = HalvesWithHolder()

    def forward(self, x):
        features, held = self.block(self.stem(x))
        return self.head(features * held.tensor)


def _pruned_halves(model: nn.Module):
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():  # the first half's channels weak: the halves are pruned to different widths
        model.block.cv1[0].weight[:16] *= 0.01
    program = capture(model, torch.rand(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.35, "importance": "l2"})
    return program


def test_a_block_returns_its_output_class_and_refuses_a_flag_other_than_the_models_call():
    """The graph computes the call the model made (output_attentions=False): another flag is refused, not
    answered with that call's structure."""
    model = FlagNet()
    program = _pruned_halves(model)
    written = to_module(program, model)
    assert isinstance(written.block, SubgraphModule)
    other = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(written(other), _by_image(program, other), rtol=1e-5, atol=1e-6)
        returned = written.block(written.stem(other), output_attentions=False)
        assert isinstance(returned, HalvesOutput) and returned.weights is None
        with pytest.raises(SubgraphError, match="'output_attentions' is True, where the model's call gave False"):
            written.block(written.stem(other), output_attentions=True)


def test_a_block_returning_an_object_that_holds_its_parameter_returns_its_tensor_alone():
    """An object returned beside the tensor came from the dense copy the call was watched on: returned by the
    stand-in, it would hold that copy's parameter, not the written-back one's. The block returns its tensor
    alone, so the model's own code that unpacks it fails: kept its class, it is refused; else the model made
    from its subgraph reads the written-back parameter itself."""
    model = HolderNet()
    program = _pruned_halves(model)
    with pytest.raises(WriteBackError, match="cannot write HolderNet back"):
        to_module(program, model, same_class=True)
    written = to_module(program, model)
    assert isinstance(written, SubgraphModule) and isinstance(written.block, SubgraphModule)
    other = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert isinstance(written.block(written.stem(other)), torch.Tensor)
        written.block.scale.mul_(3.0)  # the written-back parameter is the one read
        torch.testing.assert_close(written(other), 3.0 * _by_image(program, other) - 2.0 * written.head.bias[:, None,
                                   None], rtol=1e-5, atol=1e-5)


def test_only_a_structure_of_plain_values_that_pickles_is_returned_around_the_tensor():
    tensor = torch.ones(2)
    local = collections.namedtuple("Local", "features weights")  # made in a forward: torch.save cannot find it
    assert ReturnedLike.of(local(tensor, None)) is None
    two = ReturnedLike.of([tensor, 3, torch.zeros(1)])  # a module giving several: each tensor's place kept
    first, middle, last = two.around((torch.zeros(2), torch.ones(1)))
    assert two.tensors == 2 and torch.equal(first, torch.zeros(2)) and middle == 3 and torch.equal(last, torch.ones(1))
    assert ReturnedLike.of((tensor, Holder(tensor))) is None
    kept = ReturnedLike.of(HalvesOutput(tensor, None))
    returned = kept.around(torch.zeros(3))
    assert isinstance(returned, HalvesOutput) and torch.equal(returned.features, torch.zeros(3)) and returned.weights is None
    assert ReturnedLike.of((tensor, 4, 4)).around(tensor)[1:] == (4, 4)


class PositionBias(nn.Module):
    """A bias by head over the keys, of a window of positions (no input: no subgraph can stand in for it). Its
    window happens to equal its head count, which pruning changes: matching sizes by value sets both."""

    def __init__(self):
        super().__init__()
        self.heads, self.window = 4, 4
        self.table = nn.Parameter(torch.randn(self.window * self.window, self.heads))

    def forward(self):
        return self.table.view(self.window * self.window, self.heads).t().unsqueeze(1)


class BiasedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj, self.bias = nn.Linear(8, 24), nn.Linear(8, 8), PositionBias()

    def forward(self, x):
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.bias.heads, 2).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) + self.bias()).softmax(-1)
        return x + self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, -1))


def test_a_size_matched_by_value_alone_is_set_back_one_attribute_at_a_time():
    """The head count pruned, the window as it was: setting both back (or neither) computes something else."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), BiasedAttention(), nn.Linear(8, 4)).eval()
    program = capture(model, torch.randn(1, 16, 8)).eval()
    remove_channels(program, config={"macs": 0.6, "importance": "l2", "round_to": 1, "strict": False})
    assert program.module.state_dict()["1.bias.table"].shape == (16, 3)  # a head gone

    written = to_module(program, model)
    assert (written[1].bias.heads, written[1].bias.window) == (3, 4)
    other = torch.randn(3, 16, 8)
    with torch.no_grad():
        assert torch.allclose(written(other), _by_image(program, other), rtol=1e-5, atol=1e-6)


class FlattensBySize(nn.Module):
    """Its own forward spells the flattened width (LeNet's `view(-1, 16 * 5 * 5)`), which pruning changes."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 4 * 4, 4)
        self.tag = "kept"

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(-1, 8 * 4 * 4))

    def features(self, x):
        return self.conv(x)


def test_a_model_whose_own_forward_spells_a_width_is_made_from_its_subgraph():
    """The model itself stands in: exact on another batch (oracle: the Program, image by image), trains, saves;
    with `same_class` it is refused in one line instead."""
    torch.manual_seed(0)
    model = FlattensBySize().eval()
    program, written = _pruned_and_written(model, torch.randn(1, 3, 6, 6), 0.5)
    assert isinstance(written, SubgraphModule) and "FlattensBySize" in repr(written) and written.tag == "kept"
    assert [name for name, _ in written.named_parameters()] == [name for name, _ in model.named_parameters()]
    assert written.conv.out_channels < 8 and model.conv.out_channels == 8  # the user's model as it was
    other = torch.rand(3, 3, 6, 6)
    with torch.no_grad():
        expected = _by_image(program, other)
        for again in (written, copy.deepcopy(written), _saved_and_loaded(written)):
            torch.testing.assert_close(again(other), expected, rtol=1e-5, atol=1e-6)
    written.train()(other).square().mean().backward()
    assert written.conv.weight.grad.abs().sum() > 0
    with pytest.raises(WriteBackError) as refused:
        to_module(program, model, same_class=True)
    assert "\n" not in str(refused.value) and "same_class" in str(refused.value)


class Reassemble(nn.Module):
    """DPT's reassemble stage in small: takes a list of token maps and gives a list, each projected and reshaped
    to the shape its input had, which spells the input's width where pruning cuts the projection's apart."""

    def __init__(self):
        super().__init__()
        self.projects = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.layers = nn.ModuleList(nn.Linear(8, 4) for _ in range(2))

    def forward(self, hidden_states, scale=1.0):
        out = []
        for project, layer, hidden in zip(self.projects, self.layers, hidden_states):
            out.append(layer(torch.relu(project(hidden)).reshape(hidden.shape)) * scale)
        return out


class ReassemblingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.mid, self.reassemble, self.head = nn.Linear(4, 8), nn.Linear(8, 8), Reassemble(), nn.Linear(4, 3)

    def forward(self, x):
        a = self.stem(x)
        first, second = self.reassemble([a, self.mid(a)], scale=2.0)
        return self.head(first - second)


def test_a_block_taking_and_giving_lists_of_tensors_is_made_from_its_subgraph():
    """Each entry of its input list is read from that list, and its outputs are returned in the list's places,
    paired by their values on the dense call. Oracle: the Program, image by image, on another batch; a list of
    another length is refused, not read in part."""
    torch.manual_seed(0)
    model = ReassemblingNet().eval()
    with torch.no_grad():  # the projections' first channels weak: pruned apart from the stream they reshape to
        for project in model.reassemble.projects:
            project.weight[:4] *= 0.01
    program = capture(model, torch.randn(1, 6, 4)).eval()
    remove_channels(program, config={"macs": 0.6, "importance": "l2", "round_to": 1, "strict": False})
    assert program.state_dict()["reassemble.projects.0.weight"].shape[0] < program.state_dict()["stem.weight"].shape[0]
    written = to_module(program, model)
    assert isinstance(written.reassemble, SubgraphModule)
    x = torch.randn(3, 6, 4)
    with torch.no_grad():
        torch.testing.assert_close(written(x), _by_image(program, x), rtol=1e-5, atol=1e-6)
        a = written.stem(x)
        first, second = written.reassemble([a, written.mid(a)], scale=2.0)
        torch.testing.assert_close(written.head(first - second), written(x))
        with pytest.raises(SubgraphError, match="a list of 2 tensors as its input, not a list of 1"):
            written.reassemble([a], scale=2.0)


class PicksTheSecond(Reassemble):
    """Takes a list and reads only its second entry: its one input is that entry of the list."""

    def forward(self, hidden_states):
        hidden = hidden_states[1]
        return self.layers[1](torch.relu(self.projects[1](hidden)).reshape(hidden.shape))


def test_a_block_reading_one_entry_of_its_input_list_reads_it_from_the_list():
    torch.manual_seed(0)

    class Net(ReassemblingNet):
        def __init__(self):
            super().__init__()
            self.reassemble = PicksTheSecond()

        def forward(self, x):
            a = self.stem(x)
            return self.head(self.reassemble([a, self.mid(a)]))

    model = Net().eval()
    with torch.no_grad():
        model.reassemble.projects[1].weight[:4] *= 0.01
    program, written = _pruned_and_written(model, torch.randn(1, 6, 4), 0.6)
    assert isinstance(written.reassemble, SubgraphModule)
    x = torch.randn(3, 6, 4)
    with torch.no_grad():
        torch.testing.assert_close(written(x), _by_image(program, x), rtol=1e-5, atol=1e-6)


def test_the_stand_in_keeps_full_backward_hooks_and_buffers_left_out_of_the_state_dict():
    """A full backward hook on the model runs on its stand-in, and a buffer the model keeps out of its state dict
    stays out: the stand-in's state dict loads into the user's own class."""
    torch.manual_seed(0)
    model = FlattensBySize().eval()
    model.register_buffer("scratch", torch.zeros(1), persistent=False)
    calls = []
    model.register_full_backward_hook(lambda module, grad_input, grad_output: calls.append(len(grad_output)))
    program, written = _pruned_and_written(model, torch.randn(1, 3, 6, 6), 0.5)
    assert isinstance(written, SubgraphModule) and written.state_dict().keys() == model.state_dict().keys()
    written.train()(torch.rand(2, 3, 6, 6, requires_grad=True)).sum().backward()
    assert calls == [1]
    pruned_class = FlattensBySize()
    pruned_class.conv, pruned_class.fc = copy.deepcopy(written.conv), copy.deepcopy(written.fc)
    pruned_class.load_state_dict(written.state_dict())  # strict: the same keys


class DropsItsAuxiliaryHead(nn.Module):
    """Calls a head and drops its result, as Hugging Face's UperNet does with its auxiliary head in eval mode
    (pruning removes it as dead code), and spells its features' width in its own forward: the model itself is
    to be made from its subgraph, which would never call the head."""

    def __init__(self):
        super().__init__()
        self.stem, self.head, self.aux = nn.Conv2d(3, 16, 3), nn.Linear(16 * 36, 4), nn.Conv2d(16, 2, 1)

    def forward(self, x):
        features = torch.relu(self.stem(x))
        self.aux(features)
        return self.head(features.reshape(-1, 16 * 36))


def test_a_model_made_from_its_subgraph_that_calls_a_dropped_child_is_refused():
    torch.manual_seed(0)
    model = DropsItsAuxiliaryHead().eval()
    program = capture(model, torch.randn(1, 3, 8, 8)).eval()
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 1, "strict": False})
    with pytest.raises(WriteBackError, match="its code calls 'aux', whose result the model does not use") as refused:
        to_module(program, model)
    assert "\n" not in str(refused.value)


class HalvesThenFlattens(nn.Module):
    """A block its own code cannot resize (the halves) inside a model whose own forward spells a width."""

    def __init__(self):
        super().__init__()
        self.block, self.fc = HalvesBlock(), nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(self.block(x).view(-1, 8 * 4 * 4))


def test_a_failed_attempt_puts_each_module_back_in_the_model_it_was_taken_from(monkeypatch):
    """The block is made from its subgraph in the model, then the model itself stands in; when the proof still
    fails, the block is put back in the model the attempt was given, not in the discarded stand-in, so the next
    attempt starts from the user's modules."""
    torch.manual_seed(0)
    model = HalvesThenFlattens().eval()
    with torch.no_grad():
        model.block.cv1[0].weight[:16] *= 0.01
        model.block.cv2.weight[:4] *= 0.01
    program = capture(model, torch.rand(1, 8, 4, 4)).eval()
    remove_channels(program, config={"macs": 0.3, "importance": "l2", "round_to": 1, "strict": False})
    assert isinstance(to_module(program, model), SubgraphModule)  # both are made when the proof may pass
    given = []
    attempt = subgraph_fallback._made_from_subgraphs

    def recorded(program, watcher, module, *rest):
        given.append(module)
        return attempt(program, watcher, module, *rest)

    def fails(program, module, name):
        assert isinstance(module, SubgraphModule) and isinstance(module.block, SubgraphModule)
        raise WriteBackError("the batch of two differs")

    monkeypatch.setattr(subgraph_fallback, "_made_from_subgraphs", recorded)
    monkeypatch.setattr(subgraph_fallback, "check_batch", fails)
    with pytest.raises(WriteBackError, match="block, \\(model\\) made from the pruned subgraph"):
        to_module(program, model)
    assert given and all(type(module.block) is HalvesBlock for module in given)
