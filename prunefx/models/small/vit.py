"""A small Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2021): 4x4 patches, class
token, learned position embedding, pre-norm blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunefx.models.small.layers import FMNIST_CHANNELS, FMNIST_CLASSES, FMNIST_IMAGE_SIZE


class Attention(nn.Module):
    """Multi-head self-attention: one linear makes q, k and v, reshaped to (heads, head_dim) each."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # (batch, tokens, 3 * dim) -> (3, batch, heads, tokens, head_dim)
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """Patch embedding (a strided conv), a class token, a learned position embedding, `depth` encoder
    blocks, a final LayerNorm and a linear classifier on the class token."""

    def __init__(self, *, image_size: int = FMNIST_IMAGE_SIZE, patch_size: int = 4,
                 in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES,
                 dim: int = 128, depth: int = 6, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        patches = (image_size // patch_size) ** 2
        self.image_size = image_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for parameter in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(parameter, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny_fmnist(*, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES,
                    image_size: int = FMNIST_IMAGE_SIZE) -> SmallViT:
    """ViT with 4x4 patches (49 at 28x28), width 128, depth 6, 4 heads of 32 dims, MLP ratio 2."""
    return SmallViT(image_size=image_size, in_channels=in_channels, num_classes=num_classes)
