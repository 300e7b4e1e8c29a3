"""RT-DETR (`ultralytics:rtdetr-l.yaml`): taken at the reference, pruned as far as its graph allows.

Its deformable attention samples the value maps with grid_sampler at offsets a Linear predicts, and its query
selection ranks class scores with max and topk: prunefx has no channel rule for these operators, so the
groups they touch are blocked by name (never guessed); the CNN backbone, the hybrid encoder and the decoder's
feed-forward widths prune. The write-back into Ultralytics' classes is proven."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ultralytics")

from prunefx.models import build_model  # noqa: E402


def test_rtdetr_reference_builds_in_export_mode():
    """Main lane (a few seconds): it builds; one tensor of boxes and scores, fresh anchors each call."""
    model = build_model("ultralytics:rtdetr-l.yaml", image_size=64).module
    assert type(model).__name__ == "RTDETRDetectionModel"
    with torch.no_grad():
        small, large = model(torch.rand(1, 3, 64, 64)), model(torch.rand(1, 3, 96, 96))
    assert isinstance(small, torch.Tensor) and small.shape[0] == 1 and small.shape[-1] == large.shape[-1]
    assert small.shape[1] <= 300 and torch.isfinite(small).all()


@pytest.mark.slow
@pytest.mark.zoo
def test_rtdetr_prunes_with_the_rest_blocked_by_name():
    from prunefx.graph import capture, count
    from prunefx.graph.channels.groups import find_channel_groups
    from prunefx.interop.pruned_attention import PrunedMultiheadAttention
    from prunefx.interop.write_back import to_module
    from prunefx.passes.remove_channels import remove_channels

    model = build_model("ultralytics:rtdetr-l.yaml", image_size=64).module
    program = capture(model, torch.rand(1, 3, 64, 64), name="rtdetr-l").eval()
    blocking = {op for group in find_channel_groups(program.module).blocked for op in group.operators}
    assert {"aten.grid_sampler.default", "aten.topk.default"} <= blocking
    dense = count(program).macs
    reference = torch.rand(1, 3, 64, 64)
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "round_to": 8, "strict": False})
    assert count(program).macs / dense == pytest.approx(0.5, rel=0.03)  # measured 0.502 at 64 px
    with torch.no_grad():
        assert torch.isfinite(program(reference)).all()
    # Written back: the attention of AIFI ('model.11.ma', run through `self.model[:-1]`) and of the decoder,
    # whose heads global ranking pruned apart from their input, become PrunedMultiheadAttention; they take torch's
    # steps, so the decoder's top-k ranks the same boxes and the module equals the program bit for bit.
    module = to_module(program, model, config=False).eval()
    assert isinstance(module.model[11].ma, PrunedMultiheadAttention)
    with torch.no_grad():
        assert torch.equal(module(reference), program(reference))
