"""The cost of a channel-removal plan, predicted without touching the graph: each node's shape after the removal
is the number of surviving labels in each dim, fed to the same MACs counter as everywhere (graph/counting.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

from prunefx.graph.channels.removal import expand_mask
from prunefx.graph.counting import Cost, ShapeOf, _shape, live_nodes, node_macs


class CostModel:
    """Predicts MACs and parameters after removing a set of classes.

    A search prices thousands of plans (a small model's every plan is listed), so the surviving width of
    every labelled dim is computed in one vectorised sum per plan; the per-node arithmetic stays that
    of graph/counting.py."""

    def __init__(self, module: torch.fx.GraphModule, analysis):
        self.module, self.analysis = module, analysis
        self.classes = int(analysis.classes.max()) + 1 if analysis.classes.size else 0  # length of a removal mask
        self.mac_nodes = [n for n in live_nodes(module.graph) if node_macs(n) > 0]  # what count() counts
        parameters = dict(module.named_parameters())
        self.parameter_nodes = [n for n in module.graph.nodes if n.op == "get_attr" and n.target in parameters]
        unlabelled = set(parameters) - {n.target for n in self.parameter_nodes}
        self.fixed_params = sum(parameters[name].numel() for name in unlabelled)
        self._index_labelled_dims()

    def _index_labelled_dims(self) -> None:
        """The classes of every dim of every node a cost reads whose dims are all labelled: `_dims[node]` is (first
        dim, number of dims) into the dims, `_dim_span[dim]` the dim's span of classes, each distinct span laid once
        end to end in `_classes` (`_bounds` its spans): a ViT-L's 1,372 dims hold 128 distinct spans (a residual
        stream's every node alike), 0.1 M classes instead of 1.2 M to count for every plan priced."""
        queried = dict.fromkeys(self.parameter_nodes)
        for node in self.mac_nodes:
            queried[node] = None
            queried.update(dict.fromkeys(node.all_input_nodes))
        self._dims: dict[torch.fx.Node, tuple[int, int]] = {}
        spans: dict[bytes, tuple[int, np.ndarray]] = {}  # a span's classes as bytes -> (its number, the classes)
        dim_span: list[int] = []
        for node in queried:
            labels = self.analysis.node_labels.get(node)
            if isinstance(labels, list) and all(isinstance(dim, np.ndarray) for dim in labels):
                self._dims[node] = (len(dim_span), len(labels))
                for dim in labels:
                    classes = np.ascontiguousarray(self.analysis.classes[dim].ravel(), dtype=np.int64)
                    dim_span.append(spans.setdefault(classes.tobytes(), (len(spans), classes))[0])
        self._dim_span = np.array(dim_span, dtype=np.int64)
        distinct = [classes for _, classes in spans.values()]
        self._bounds = np.concatenate([[0], np.cumsum([span.size for span in distinct], dtype=np.int64)])
        self._classes = np.concatenate(distinct) if distinct else np.zeros(0, dtype=np.int64)

    def dim_classes(self, node, axis: int) -> np.ndarray | None:
        """The class of every index of dim `axis` of `node`, None where it is unlabelled (read from the analysis
        for a node no cost reads: a layer norm's input, which a latency table prices)."""
        where = self._dims.get(node) if isinstance(node, torch.fx.Node) else None
        if where is None:
            labels = self.analysis.node_labels.get(node) if isinstance(node, torch.fx.Node) else None
            if not isinstance(labels, list) or not all(isinstance(dim, np.ndarray) for dim in labels):
                return None
            return self.analysis.classes[labels[axis]].ravel()
        span = self._dim_span[where[0] + axis % where[1]]
        return self._classes[self._bounds[span]: self._bounds[span + 1]]

    def shape_of(self, removed_mask: np.ndarray) -> ShapeOf:
        """The shape every node that computes (and each of its inputs) has after the removal; other nodes
        and values keep the shape their metadata records."""
        survives = ~expand_mask(self.analysis, removed_mask)
        running = np.concatenate([[0], np.cumsum(survives[self._classes], dtype=np.int64)])
        widths = (running[self._bounds[1:]] - running[self._bounds[:-1]])[self._dim_span].tolist()

        def shape(arg):
            where = self._dims.get(arg) if isinstance(arg, torch.fx.Node) else None
            if where is not None:
                return tuple(widths[where[0]: where[0] + where[1]])
            return _shape(arg)

        return shape

    def cost(self, removed_mask: np.ndarray) -> Cost:
        shape = self.shape_of(removed_mask)
        macs = sum(node_macs(node, shape) for node in self.mac_nodes)
        params = self.fixed_params + sum(math.prod(shape(node)) for node in self.parameter_nodes)
        return Cost(macs=int(macs), params=int(params))
