"""Channel-label rule for view/reshape: dims are matched by products of sizes.

The input and output shapes (size-1 dims aside) are cut into *atoms*: the finest factors that both
shapes are products of (cut points of the cumulative products must form a divisibility chain:
[B, H*D] -> [B*H, D] has atoms B, H, D; [6, 4] -> [4, 6] has none and is blocked). Each dim is then
a grid over its atoms, so `C -> (heads, head_dim)` is recorded as a factorisation, and a later
reshape back over the same factors reuses them.
"""

from __future__ import annotations

import numpy as np


def _atoms(in_sizes: list[int], out_sizes: list[int]) -> list[int] | None:
    cuts = sorted(set(np.cumprod(in_sizes).tolist()) | set(np.cumprod(out_sizes).tolist()))
    atoms, previous = [], 1
    for cut in cuts:
        if cut % previous:
            return None
        atoms.append(cut // previous)
        previous = cut
    return atoms


def _split_by_atoms(sizes: list[int], atoms: list[int]) -> list[list[int]]:
    """Indices of the atoms that make up each dim, in order."""
    groups, index = [], 0
    for size in sizes:
        members, product = [], 1
        while product < size:
            product *= atoms[index]
            members.append(index)
            index += 1
        groups.append(members)
    return groups


def _existing_factors(ctx, labels: np.ndarray, sizes: list[int]):
    for grid in ctx.space.grids:
        if grid.elements.size == labels.size and [f.size for f in grid.factors] == sizes \
                and np.array_equal(grid.elements.reshape(-1), labels):
            return grid.factors
    return None


def _atom_labels_of_input(ctx, labels: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    if len(sizes) == 1:
        return [labels]
    factors = _existing_factors(ctx, labels, sizes)
    if factors is None:
        factors = [ctx.space.fresh(size) for size in sizes]
        ctx.space.tie(ctx.space.grid(factors), labels)
    return list(factors)


def view(ctx, node):
    in_labels = ctx.labels(node.args[0])
    out_shape = list(ctx.shape(node))
    kept_in = [lab for lab in in_labels if lab.size != 1]
    kept_out = [i for i, size in enumerate(out_shape) if size != 1]
    in_sizes, out_sizes = [lab.size for lab in kept_in], [out_shape[i] for i in kept_out]
    atoms = _atoms(in_sizes, out_sizes) if in_sizes else []
    if atoms is None:
        for lab in in_labels:
            ctx.block(lab, node, f"reshape {in_sizes} -> {out_sizes} mixes dims in a way that cannot be factorised")
        return [ctx.space.fixed(size) for size in out_shape]
    atom_labels: list[np.ndarray] = []
    for lab, members in zip(kept_in, _split_by_atoms(in_sizes, atoms)):
        atom_labels += _atom_labels_of_input(ctx, lab, [atoms[m] for m in members])
    result = [ctx.space.fixed(size) for size in out_shape]
    for out_dim, members in zip(kept_out, _split_by_atoms(out_sizes, atoms)):
        factors = [atom_labels[m] for m in members]
        result[out_dim] = factors[0] if len(factors) == 1 else _merged(ctx, factors)
    return result


def reshape_as(ctx, node):
    """x.reshape_as(other): a view whose sizes come from `other`, so each output dim is tied to
    other's dim (removal shrinks both alike and the shapes still agree)."""
    result = view(ctx, node)
    for out_labels, other_labels in zip(result, ctx.labels(node.args[1])):
        ctx.space.tie(out_labels, other_labels)
    return result


def _merged(ctx, factors: list[np.ndarray]) -> np.ndarray:
    for grid in ctx.space.grids:  # the same factors merged before: reuse that dim's labels
        if len(grid.factors) == len(factors) and all(a is b for a, b in zip(grid.factors, factors)):
            return grid.elements.reshape(-1)
    return ctx.space.grid(factors)
