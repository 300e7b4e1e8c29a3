"""PrunedMultiheadAttention: torch's MultiheadAttention call with heads narrower than the input.

Oracles are torch's own MultiheadAttention: unnarrowed, the module must compute what torch computes for every
form of the call; with heads (or head dims) cut out, what the dense module computes once those heads' (or
dims') weights are zero, which removes their contribution exactly. Unnarrowed it takes torch's steps, so it is
held to torch's results bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunefx.interop.pruned_attention import PrunedMultiheadAttention, narrow_heads, off_nested_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _torch_s_own_steps():
    """torch's fused fast path (eval, no grad) off: the captured program holds torch's own steps, the oracle."""
    dtype, fast = torch.get_default_dtype(), torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.set_default_dtype(dtype)
    torch.backends.mha.set_fastpath_enabled(fast)


def _dense(batch_first=True, kdim=None, vdim=None, dropout=0.0) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    module = nn.MultiheadAttention(16, 4, dropout=dropout, batch_first=batch_first, kdim=kdim, vdim=vdim).eval()
    with torch.no_grad():  # torch starts the biases at 0, which would hide a bias taken from the wrong rows
        for parameter in module.parameters():
            parameter.normal_(std=0.3)
    return module


def _narrowed(dense: nn.MultiheadAttention) -> nn.MultiheadAttention:
    module = copy.deepcopy(dense)
    narrow_heads(module, dense.num_heads, dense.head_dim)
    assert type(module) is PrunedMultiheadAttention and isinstance(module, nn.MultiheadAttention)
    return module


def _same(expected, actual, exact=True) -> None:
    """Bit for bit where the module takes torch's own steps; else to rounding (the zeroed oracles)."""
    for mine, theirs in zip(actual, expected, strict=True):
        assert (mine is None) == (theirs is None)
        if theirs is None:
            continue
        assert mine.shape == theirs.shape
        if exact:
            assert torch.equal(mine, theirs)
        else:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


CALLS = {
    "plain": {},
    "no weights": {"need_weights": False},
    "weights per head": {"average_attn_weights": False},
    "padding": {"key_padding_mask": torch.tensor([[False] * 6 + [True], [False] * 7])},
    "float padding": {"key_padding_mask": torch.randn(2, 7)},
    "mask 2d": {"attn_mask": torch.rand(5, 7) > 0.7, "need_weights": False},
    "mask 3d": {"attn_mask": torch.randn(8, 5, 7)},
    "both": {"attn_mask": torch.randn(5, 7), "key_padding_mask": torch.tensor([[False] * 6 + [True]] * 2)},
    "causal": {"attn_mask": nn.Transformer.generate_square_subsequent_mask(7)[:5], "is_causal": True,
               "need_weights": False},
}


@pytest.mark.parametrize("call", CALLS)
def test_unnarrowed_it_computes_what_torch_computes(call):
    dense = _dense()
    generator = torch.Generator().manual_seed(1)
    query, key = torch.randn(2, 5, 16, generator=generator), torch.randn(2, 7, 16, generator=generator)
    with torch.no_grad():
        _same(dense(query, key, key, **CALLS[call]), _narrowed(dense)(query, key, key, **CALLS[call]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["sequence first", "unbatched", "self-attention", "own key and value widths"])
def test_every_layout_of_the_call(layout, dtype):
    dense = _dense(batch_first=layout != "sequence first",
                   kdim=12 if layout.startswith("own") else None, vdim=10 if layout.startswith("own") else None)
    dense.to(dtype)
    torch.set_default_dtype(dtype)  # the inputs below in that dtype (put back by the fixture)
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(5, 2, 16, generator=generator) if layout == "sequence first" else \
        torch.randn(5, 16, generator=generator) if layout == "unbatched" else torch.randn(2, 5, 16, generator=generator)
    key = value = query
    if layout.startswith("own"):
        key, value = torch.randn(2, 7, 12, generator=generator), torch.randn(2, 7, 10, generator=generator)
    with torch.no_grad():
        _same(dense(query, key, value), _narrowed(dense)(query, key, value))


def test_in_training_it_drops_out_the_weights_torch_drops():
    dense, query = _dense(dropout=0.5).train(), torch.randn(2, 5, 16)
    narrowed = _narrowed(dense)
    torch.manual_seed(3)
    expected = dense(query, query, query)
    torch.manual_seed(3)
    _same(expected, narrowed(query, query, query))
    with torch.no_grad():  # it does drop out: not what the eval module computes
        assert not torch.allclose(expected[0], narrowed.eval()(query, query, query)[0])


def _heads_removed(dense: nn.MultiheadAttention, kept: list[int]) -> nn.MultiheadAttention:
    """`dense` with only the heads in `kept`: their rows of the input projection, their columns of the output."""
    module, width = copy.deepcopy(dense), dense.head_dim
    rows = torch.cat([torch.arange(head * width, (head + 1) * width) for head in kept])
    with torch.no_grad():
        packed = torch.cat([rows + part * dense.embed_dim for part in range(3)])
        module.in_proj_weight = nn.Parameter(dense.in_proj_weight[packed])
        module.in_proj_bias = nn.Parameter(dense.in_proj_bias[packed])
        module.out_proj.weight = nn.Parameter(dense.out_proj.weight[:, rows])
    narrow_heads(module, len(kept), dense.head_dim)
    return module


def _heads_zeroed(dense: nn.MultiheadAttention, kept: list[int]) -> nn.MultiheadAttention:
    module, width = copy.deepcopy(dense), dense.head_dim
    with torch.no_grad():
        for head in set(range(dense.num_heads)) - set(kept):
            module.out_proj.weight[:, head * width:(head + 1) * width] = 0
    return module


def test_heads_removed_compute_what_the_dense_module_computes_with_them_zeroed():
    dense, query = _dense(), torch.randn(2, 5, 16)
    pruned = _heads_removed(dense, [0, 2, 3])
    assert (pruned.embed_dim, pruned.num_heads, pruned.head_dim) == (16, 3, 4)
    with torch.no_grad():
        _same(_heads_zeroed(dense, [0, 2, 3])(query, query, query, need_weights=False),
              pruned(query, query, query, need_weights=False), exact=False)


def test_head_dims_removed_keep_the_scale_they_are_given():
    dense, query = _dense(), torch.randn(2, 5, 16)
    module = copy.deepcopy(dense)
    zeroed = copy.deepcopy(dense)
    kept = torch.tensor([d for d in range(16) if d % 4 != 3])  # each head's last dim goes
    with torch.no_grad():
        for part in range(3):  # the dropped dims carry nothing in q . k, nor in the values
            zeroed.in_proj_weight[part * 16 + 3::4] = 0
            zeroed.in_proj_bias[part * 16 + 3::4] = 0
        packed = torch.cat([kept + part * 16 for part in range(3)])
        module.in_proj_weight = nn.Parameter(dense.in_proj_weight[packed])
        module.in_proj_bias = nn.Parameter(dense.in_proj_bias[packed])
        module.out_proj.weight = nn.Parameter(dense.out_proj.weight[:, kept])
    narrow_heads(module, 4, dense.head_dim)
    assert module.head_dim == 3
    with torch.no_grad():
        _same(zeroed(query, query, query), module(query, query, query), exact=False)


def test_torch_s_encoder_layer_calls_it_in_eval_without_grad():
    # TransformerEncoderLayer's fused kernel (eval, no grad, an even head count) assumes one width for heads and
    # input: it must not run on narrowed heads
    torch.backends.mha.set_fastpath_enabled(True)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    pruned, zeroed = copy.deepcopy(layer), copy.deepcopy(layer)
    pruned.self_attn, zeroed.self_attn = _heads_removed(layer.self_attn, [1, 3]), _heads_zeroed(layer.self_attn, [1, 3])
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-5, atol=1e-5)


def test_what_it_cannot_hold_is_refused_by_reason():
    with pytest.raises(ValueError, match="key/value bias"):
        narrow_heads(nn.MultiheadAttention(16, 4, add_bias_kv=True), 4, 4)
    with pytest.raises(ValueError, match="not 3 heads"):
        narrow_heads(nn.MultiheadAttention(16, 4), 3, 4)


def test_the_causal_hint_needs_its_mask_as_in_torch():
    module, query = _narrowed(_dense()), torch.randn(2, 5, 16)
    with pytest.raises(RuntimeError, match="attn_mask"):
        module(query, query, query, is_causal=True)


@pytest.mark.parametrize("mask", [torch.zeros(1, 7), torch.zeros(5, 1), torch.zeros(1, 5, 7), torch.zeros(2, 5, 7)])
def test_masks_torch_refuses_are_refused_not_broadcast(mask):
    dense, query, key = _dense(), torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with pytest.raises(RuntimeError):
        dense(query, key, key, attn_mask=mask)
    with pytest.raises(RuntimeError, match="attn_mask"):
        _narrowed(dense)(query, key, key, attn_mask=mask)


def test_it_initialises_the_projections_it_holds_as_torch_does():
    module = _heads_removed(_dense(), [0, 1])
    module._reset_parameters()  # torch's own would read projections it does not hold
    assert not module.in_proj_bias.any() and not module.out_proj.bias.any()
    assert module.in_proj_weight.std() > 0


def test_torch_s_encoder_keeps_padded_inputs_for_narrowed_heads():
    # a TransformerEncoder packs inputs with a padding mask as nested tensors (eval, no grad), for a fused
    # kernel that narrowed heads cannot take
    torch.backends.mha.set_fastpath_enabled(True)
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2).eval()
    pruned, zeroed = copy.deepcopy(encoder), copy.deepcopy(encoder)
    for mine, theirs, dense in zip(pruned.layers, zeroed.layers, encoder.layers):
        mine.self_attn, theirs.self_attn = _heads_removed(dense.self_attn, [0, 3]), _heads_zeroed(dense.self_attn, [0, 3])
    off_nested_tensors(pruned)
    x, padding = torch.randn(2, 5, 16), torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    with torch.no_grad():
        expected, actual = zeroed(x, src_key_padding_mask=padding), pruned(x, src_key_padding_mask=padding)
    kept = ~padding  # the nested path leaves zeros where the padding is
    torch.testing.assert_close(actual[kept], expected[kept], rtol=1e-5, atol=1e-5)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_on_cuda_it_computes_what_torch_computes_there(dtype, monkeypatch):
    """Unnarrowed on the GPU, in full and half precision, masked or not, in training with dropout too: torch's
    steps on torch's kernels there (TF32 off)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    dense = _dense(dropout=0.25).to("cuda", dtype)
    narrowed = _narrowed(dense)
    generator = torch.Generator().manual_seed(1)
    query, key = (torch.randn(shape, generator=generator).to("cuda", dtype) for shape in ((2, 5, 16), (2, 7, 16)))
    padding = torch.tensor([[False] * 6 + [True], [False] * 7], device="cuda")
    with torch.no_grad():
        for call in ({}, {"need_weights": False}, {"key_padding_mask": padding, "need_weights": False}):
            _same(dense(query, key, key, **call), narrowed(query, key, key, **call))
    dense.train(), narrowed.train()
    torch.cuda.manual_seed(3)
    expected = dense(query, key, key, need_weights=False)
    torch.cuda.manual_seed(3)
    _same(expected, narrowed(query, key, key, need_weights=False))
