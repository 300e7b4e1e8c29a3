"""nn.MultiheadAttention with its heads narrower than its input: what the write-back gives for a pruned one.

torch's MultiheadAttention computes its heads at its input width (embed_dim = num_heads x head_dim, asserted
in `F.multi_head_attention_forward`), and it scales by its own head dim. Global ranking prunes the residual
width and the heads apart, and the Program keeps the dense scale. This subclass holds the same tensors under
the same names and takes the same call, with heads of any width and the dense scale; it is what
`to_module` puts in place of a MultiheadAttention whose widths came apart (interop/module_resizers.py), and
the write-back proves it against the Program like any other module. It runs eagerly, traces and exports;
`torch.jit.script` does not compile it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """A MultiheadAttention whose query/key and value projections have `num_heads` heads of their own widths and
    whose softmax scale is the default one of `scale_head_dim` (module docstring). Built by `narrow_heads`.

    Its forward takes torch's steps in torch's order (sequence first, one product for self-attention, the same
    reshapes and kernels), so that it computes bit for bit what the captured Program computes: a detector that
    ranks its outputs (top-k) would turn any rounding difference into other boxes."""

    scale_head_dim: int

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:  # a hint only, as in torch: the mask itself must be given
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        batched = query.dim() == 3
        query, key, value = _sequence_first(query, key, value, batched, self.batch_first)
        if not batched and key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        length, batch, sources = query.shape[0], query.shape[1], key.shape[0]
        _check_masks(attn_mask, key_padding_mask, batch * self.num_heads, length, sources, batch)
        q, k, v = self._projections(query, key, value)
        # (length, batch, heads x width) -> (batch x heads, length, width)
        q, k, v = (t.view(t.shape[0], batch * self.num_heads, -1).transpose(0, 1) for t in (q, k, v))
        if is_causal and key_padding_mask is None and not need_weights:
            mask = None  # the kernel's own causal mask, as torch takes it
        else:
            mask, is_causal = _mask(attn_mask, key_padding_mask, batch, self.num_heads, sources, q.dtype), False
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            output, weights = self._weighted(q, k, v, mask, dropout)
            weights = weights.view(batch, self.num_heads, length, sources)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            output, weights = self._fused(q, k, v, mask, dropout, is_causal, batch), None
        output = F.linear(output.reshape(length * batch, -1), self.out_proj.weight, self.out_proj.bias)
        output = output.view(length, batch, -1)
        if not batched:
            return output.squeeze(1), None if weights is None else weights.squeeze(0)
        return (output.transpose(1, 0) if self.batch_first else output), weights

    def _reset_parameters(self) -> None:
        """torch's initialisation (Xavier-uniform projections, zero biases) of the projections it holds."""
        for weight in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if weight is not None:
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)

    def _projections(self, query, key, value) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        widths = projection_widths(self)
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.split(widths)
        if self.in_proj_weight is None:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        elif query is key is value:  # self-attention: one product, its three parts made contiguous
            packed = F.linear(query, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, widths[0]))
            parts = packed.unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            return parts[0], parts[1], parts[2]
        elif key is value:  # keys and values from one source: one product for both
            q = F.linear(query, self.in_proj_weight[:widths[0]], None if biases[0] is None else biases[0])
            pair_bias = None if self.in_proj_bias is None else self.in_proj_bias[widths[0]:]
            pair = F.linear(key, self.in_proj_weight[widths[0]:], pair_bias).unflatten(-1, (2, widths[1]))
            parts = pair.unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            return q, parts[0], parts[1]
        else:
            weights = self.in_proj_weight.split(widths)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def _weighted(self, q, k, v, mask, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with its weights spelled out: (output (length, batch x heads, width), weights)."""
        q = q * math.sqrt(1.0 / float(self.scale_head_dim))
        scores = torch.bmm(q, k.transpose(-2, -1)) if mask is None else torch.baddbmm(mask, q, k.transpose(-2, -1))
        weights = torch.softmax(scores, dim=-1)
        if dropout > 0.0:
            weights = F.dropout(weights, p=dropout)
        return torch.bmm(weights, v).transpose(0, 1), weights

    def _fused(self, q, k, v, mask, dropout: float, is_causal: bool, batch: int) -> torch.Tensor:
        """Fused attention: its output (length, batch, heads, width)."""
        if mask is not None:
            mask = mask.unsqueeze(0) if mask.size(0) == 1 and mask.dim() == 3 else \
                mask.view(batch, self.num_heads, -1, k.shape[1])
        q, k, v = (t.view(batch, self.num_heads, t.shape[1], t.shape[2]) for t in (q, k, v))
        scale = None if self.scale_head_dim == self.head_dim else 1.0 / math.sqrt(self.scale_head_dim)
        output = F.scaled_dot_product_attention(q, k, v, mask, dropout, is_causal, scale=scale)
        return output.permute(2, 0, 1, 3)


def _sequence_first(query, key, value, batched: bool, batch_first: bool):
    """(length, batch, width) views of the inputs; batched, which of them are the same tensor is kept."""
    if batched and not batch_first:
        return query, key, value
    if not batched:  # torch unsqueezes each input apart: three products, whichever inputs were one tensor
        return query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    changed = {id(t): t.transpose(1, 0) for t in (query, key, value)}
    return changed[id(query)], changed[id(key)], changed[id(value)]


def projection_widths(module: nn.MultiheadAttention) -> tuple[int, int, int]:
    """The output widths of the query, key and value projections."""
    if module.in_proj_weight is not None:
        return (module.in_proj_weight.shape[0] // 3,) * 3
    return module.q_proj_weight.shape[0], module.k_proj_weight.shape[0], module.v_proj_weight.shape[0]


def narrow_heads(module: nn.MultiheadAttention, num_heads: int, scale_head_dim: int) -> None:
    """Make `module` (holding its pruned tensors) a PrunedMultiheadAttention of `num_heads` heads whose softmax
    scale is that of heads `scale_head_dim` wide (the dense model's), in place; ValueError with a one-line
    reason where its tensors cannot be such heads."""
    query, key, value = projection_widths(module)
    if module.bias_k is not None or module.add_zero_attn:
        raise ValueError("its widths came apart and it adds a key/value bias or zero attention, which "
                         "PrunedMultiheadAttention does not hold")
    if query != key or query % num_heads or value % num_heads:
        raise ValueError(f"its query, key and value widths {query}, {key}, {value} are not {num_heads} heads "
                         "with queries as wide as keys")
    module.__class__ = PrunedMultiheadAttention
    # torch's layers take a fused kernel that assumes embed_dim = num_heads x head_dim where this flag is set
    # (TransformerEncoderLayer in eval without grad): cleared, they call this forward
    module._qkv_same_embed_dim = False
    module.num_heads, module.head_dim, module.scale_head_dim = num_heads, query // num_heads, scale_head_dim
    if module.in_proj_weight is not None:
        module.embed_dim = module.kdim = module.vdim = module.in_proj_weight.shape[1]
    else:
        module.embed_dim, module.kdim, module.vdim = (tensor.shape[1] for tensor in (
            module.q_proj_weight, module.k_proj_weight, module.v_proj_weight))


def _check_masks(attn_mask, key_padding_mask, heads_batch: int, length: int, sources: int, batch: int) -> None:
    """The mask shapes torch takes, refused as torch refuses others (a mask of another shape would broadcast)."""
    if attn_mask is not None:
        expected = {2: (length, sources), 3: (heads_batch, length, sources)}.get(attn_mask.dim())
        if expected is None:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if tuple(attn_mask.shape) != expected:
            raise RuntimeError(f"The shape of the {attn_mask.dim()}D attn_mask is {tuple(attn_mask.shape)}, but "
                               f"should be {expected}.")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, sources):
        raise AssertionError(f"expecting key_padding_mask shape of {(batch, sources)}, but got "
                             f"{tuple(key_padding_mask.shape)}")


def off_nested_tensors(model: nn.Module) -> None:
    """A TransformerEncoder decides in its __init__, from its attention, to pack inputs with a padding mask as
    nested tensors for its layers' fused kernel; that kernel does not run narrowed heads, and their forward
    takes no nested tensor: the encoders holding one keep their inputs padded."""
    for encoder in model.modules():
        if isinstance(encoder, nn.TransformerEncoder) and \
                any(isinstance(each, PrunedMultiheadAttention) for each in encoder.modules()):
            encoder.use_nested_tensor = False


def _mask(attn_mask, key_padding_mask, batch: int, heads: int, sources: int,
          dtype: torch.dtype) -> torch.Tensor | None:
    """One additive mask (1 or batch x heads, length, sources), or None; True in a boolean mask is a position
    not attended to, as in torch."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        mask = mask.unsqueeze(0) if mask.dim() == 2 else mask
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, sources).expand(-1, heads, -1, -1)
        padding = padding.reshape(batch * heads, 1, sources)
        mask = padding if mask is None else mask + padding
    return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():  # as torch refuses it
        raise AssertionError(f"only bool and floating types of masks are supported, not {mask.dtype}")
    return mask
