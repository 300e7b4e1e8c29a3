"""Depth: blocks, their linearisation, affine chains and merging, block damage and norm replacement."""
