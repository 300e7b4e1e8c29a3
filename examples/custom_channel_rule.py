"""A channel rule for your own operator: a `torch.library` custom op blocks the channels it touches
(prunefx never guesses what an unknown operator does with them) until you register a rule that says.

How-to: docs/howto/channel-rule.md. Run it:

    .venv/bin/python examples/custom_channel_rule.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

import prunefx
from prunefx.graph.channels.rules import same_as_input
from prunefx.passes import remove_channels


@torch.library.custom_op("prunefx_example::scaled_relu", mutates_args=())
def scaled_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) * 2.0


@scaled_relu.register_fake
def _(x):
    return torch.empty_like(x)


class Net(nn.Module):
    """conv -> the custom op -> conv -> pool -> classifier: the custom op sits inside the first group."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.b(scaled_relu(self.a(x)))
        return self.head(x.mean(dim=(2, 3)))


def prune(model: nn.Module, x: torch.Tensor) -> tuple[prunefx.Program, dict]:
    program = prunefx.capture(model, x).eval()
    result = prunefx.Pipeline([(remove_channels, {"macs": 0.6, "round_to": 8, "strict": False})]).run(program)
    return result.program, result.stats()["remove_channels"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, args.size, args.size)

    _, before = prune(model, x)
    print(f"without a rule: conv a keeps {model.a.out_channels} channels; blocked: {before['blocked']}")

    # Element-wise: output dim d carries input dim d, so the channels pass straight through.
    @prunefx.channel_rule(torch.ops.prunefx_example.scaled_relu.default)
    def scaled_relu_rule(ctx, node):
        return same_as_input(ctx, node)

    try:
        pruned, after = prune(model, x)
    finally:  # the rule table is global: leave it as it was
        prunefx.remove_channel_rule(torch.ops.prunefx_example.scaled_relu.default)
    width = pruned.module.a.weight.shape[0]
    print(f"with the rule: conv a keeps {width} of {model.a.out_channels} channels; "
          f"MACs {after['macs_after'] / after['macs_before']:.2f} of dense; blocked: {after['blocked']}")
    return {"blocked_before": before["blocked"], "blocked_after": after["blocked"], "width_a": width,
            "macs_kept": after["macs_after"] / after["macs_before"]}


if __name__ == "__main__":
    main()
