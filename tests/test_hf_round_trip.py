"""Hugging Face round trip: a pruned HF vision model written back (to_module), its config set to the pruned
widths, saved with save_pretrained and rebuilt by from_pretrained, computes what the pruned Program computes.
Widths a config cannot hold (global ranking: every layer its own width; local ranking: heads and head dims
both cut) are refused in one line."""

from __future__ import annotations

import pytest
import torch

from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError
from prunefx.interop.write_back import to_module
from prunefx.passes.remove_channels import remove_channels

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# Uniform ranking with a channels target keeps the same fraction of every width, head counts whole.
UNIFORM = {"channels": 0.5, "ranking": "uniform", "round_to": 4, "strict": False}
LOCAL = {**UNIFORM, "ranking": "local"}  # each group on its own; attention loses whole heads, head dims stay


def _vit():
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=128, num_labels=5)
    return transformers.ViTForImageClassification(config), torch.randn(1, 3, 32, 32)


def _convnext():
    config = transformers.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=5)
    return transformers.ConvNextForImageClassification(config), torch.randn(1, 3, 64, 64)


def _segformer():
    config = transformers.SegformerConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                          num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=64, num_labels=3)
    return transformers.SegformerForSemanticSegmentation(config), torch.randn(1, 3, 64, 64)


def _pruned(build, config):
    torch.manual_seed(0)
    model, x = build()
    program = capture(model.eval(), x).eval()
    remove_channels(program, config=config)
    return model, x, program


def _round_trip(model, program, x, folder):
    module = to_module(program, model)
    module.save_pretrained(folder)
    rebuilt = type(model).from_pretrained(folder).eval()
    with torch.no_grad():
        expected = program(x)["logits"]
        actual = rebuilt(x).logits
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
    return rebuilt.config


def test_vit_round_trip_with_attention_kept(tmp_path):
    # ViT's config ties q/k/v to one head_dim per model: the attention is kept whole, the residual and MLP
    # widths go (head_dim then no longer follows from hidden_size // num_attention_heads: it is written out)
    floors = {f"vit.layers.{i}.attention.{p}_proj.weight:0": 64 for i in range(2) for p in "qkv"}
    model, x, program = _pruned(_vit, {**UNIFORM, "min_widths": floors})
    config = _round_trip(model, program, x, tmp_path / "vit")
    hidden = program.state_dict()["vit.layers.0.layernorm_before.weight"].shape[0]
    assert config.hidden_size == hidden < 64 and config.head_dim == 16 and config.num_attention_heads == 4
    assert config.intermediate_size == program.state_dict()["vit.layers.0.mlp.fc1.weight"].shape[0] < 128


def test_convnext_round_trip(tmp_path):
    model, x, program = _pruned(_convnext, UNIFORM)
    config = _round_trip(model, program, x, tmp_path / "convnext")
    assert config.hidden_sizes == [8, 16, 32, 64]  # half of every stage


def test_vit_round_trip_with_head_dims_cut(tmp_path):
    # the class derives the attention scale from the pruned head dim: to_module moves the ratio into q_proj
    model, x, program = _pruned(_vit, UNIFORM)
    config = _round_trip(model, program, x, tmp_path / "vit")
    assert config.hidden_size == 32 and config.num_attention_heads == 4 and config.intermediate_size == 64
    assert getattr(config, "head_dim", 8) == 8


def test_segformer_round_trip(tmp_path):
    model, x, program = _pruned(_segformer, UNIFORM)
    config = _round_trip(model, program, x, tmp_path / "segformer")
    assert config.hidden_sizes == [8, 16, 32, 64] and config.num_attention_heads == [1, 2, 4, 8]
    assert config.decoder_hidden_size == 32 and config.mlp_ratios == [4, 4, 4, 4]


@pytest.mark.parametrize("build, config, expected", [
    (_vit, {"macs": 0.5, "strict": False}, "ViTConfig"),           # global ranking: widths per layer
    (_segformer, LOCAL, "SegformerConfig"),  # half the heads go, the residual more: two widths in one stage
])
def test_widths_a_config_cannot_hold_are_refused_in_one_line(build, config, expected):
    model, _, program = _pruned(build, config)
    with pytest.raises(PrunefxError) as refused:
        to_module(program, model)
    message = str(refused.value)
    assert expected in message and "--ranking uniform --channels" in message and "\n" not in message
    assert to_module(program, model, config=False) is not None  # the module itself is still proven


def _beit():
    """The relative-position bias keeps a window of 4 patches beside 4 heads: matching sizes by value takes the
    window for the head count that pruning changed."""
    config = transformers.BeitConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128, use_relative_position_bias=True,
                                     num_labels=5)
    return transformers.BeitForImageClassification(config), torch.randn(1, 3, 64, 64)


def _pvt():
    """Called by name (`encoder(pixel_values=...)`), a patch embedding returning (tokens, height, width), a child
    named `self`, a one-row position table reshaped to the grid: the sequence reduction's width pruned apart
    from the tokens' needs the Program's subgraph in place of those modules."""
    config = transformers.PvtConfig(image_size=64, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                    num_attention_heads=[1, 2, 4, 8], num_labels=5)
    return transformers.PvtForImageClassification(config), torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("build", [_beit, _pvt, _segformer])
def test_a_model_pruned_with_the_default_ranking_writes_back_as_a_module(build):
    model, x, program = _pruned(build, {"macs": 0.5, "strict": False})
    module = to_module(program, model, config=False)
    if build is _beit:  # the window set back, as it was; the head count (the table's width) pruned
        bias = module.beit.encoder.layer[0].attention.attention.relative_position_bias \
            if hasattr(module.beit, "encoder") else module.beit.layers[0].relative_position_bias
        assert bias.window_size == (4, 4) and bias.relative_position_bias_table.shape[1] < 4
    other = torch.randn_like(x)
    with torch.no_grad():
        expected, actual = program(other)["logits"], module(other).logits
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()


def _swin():
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                     window_size=4, num_labels=5)
    return transformers.SwinForImageClassification(config), torch.randn(1, 3, 32, 32)


def test_swin_round_trip(tmp_path):
    # the head counts are held whole and not counted by the channels target: every width the ranking cuts halves
    # (the last MLP kept 60 of 128 where the held heads counted); SwinModel.num_features, which no captured call
    # reads, is set as the class sets it from the pruned embed_dim
    model, x, program = _pruned(_swin, UNIFORM)
    config = _round_trip(model, program, x, tmp_path / "swin")
    assert config.embed_dim == 8 and config.num_heads == [2, 4]
    assert program.state_dict()["swin.encoder.layers.1.blocks.0.mlp.fc1.weight"].shape[0] == 64


def test_a_tensor_no_captured_call_reads_is_named_in_the_refusal():
    # ViTForMaskedImageModeling's mask_token is read only with bool_masked_pos: it keeps the dense width, which
    # no config of the pruned widths builds; the refusal names it and does not recommend the ranking just used
    def build():
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128)
        return transformers.ViTForMaskedImageModeling(config), torch.randn(1, 3, 32, 32)

    model, _, program = _pruned(build, UNIFORM)
    with pytest.raises(PrunefxError, match=r"'vit\.embeddings\.mask_token' \(1, 1, 64\), which the captured call "
                                           r"never reads") as refused:
        to_module(program, model)
    assert "--ranking uniform" not in str(refused.value) and "\n" not in str(refused.value)


def test_an_attribute_set_from_the_config_that_the_proof_refutes_is_a_refusal_naming_it(monkeypatch):
    # Swin's num_features is set as the class sets it (test_swin_round_trip); were the captured call to read it
    # after all, the proof would fail: then the refusal names it, and no subgraph stands in under a config that
    # from_pretrained would rebuild otherwise
    import prunefx.interop.write_back as write_back

    def refuted(*args, **kwargs):
        raise write_back.WriteBackError("the module differs by 0.5 relative from the pruned program")

    model, _, program = _pruned(_swin, UNIFORM)
    monkeypatch.setattr(write_back, "verify_module", refuted)
    with pytest.raises(PrunefxError, match=r"with swin\.num_features set as the class built from it sets them, the "
                                           r"module does not compute the pruned program \(the module differs"):
        to_module(program, model)


def _vit_image_size_as_hidden_size():
    config = transformers.ViTConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=128, num_labels=5)
    # at batch 2 the class token's expand spells the hidden size (64 -> 32) in the embeddings' own call
    return transformers.ViTForImageClassification(config), torch.randn(2, 3, 64, 64)


def test_an_attribute_that_merely_equals_a_pruned_width_is_built_as_the_class_builds_it(tmp_path):
    # ViTEmbeddings' image_size (64, 64) beside a hidden size of 64: write-back sets it by value to (32, 32), the
    # config's class builds (64, 64), the dense value; it is settled as the class builds it, and the proof holds
    model, x, program = _pruned(_vit_image_size_as_hidden_size, {**UNIFORM, "round_to": 1})
    config = _round_trip(model, program, x, tmp_path / "vit")
    assert config.hidden_size == 32 and config.image_size == 64


def test_without_the_config_an_attribute_that_merely_equals_a_width_is_set_back_where_a_subgraph_fails():
    # the embeddings' own code changed (the class token's expand), so their subgraph stands in first, and fails on
    # the batch of two; the module's own code with its image size as in the dense model is the one proven
    model, x, program = _pruned(_vit_image_size_as_hidden_size, {**UNIFORM, "round_to": 1})
    module = to_module(program, model, config=False)
    assert type(module.vit.embeddings).__name__ == "ViTEmbeddings" and module.vit.embeddings.image_size == (64, 64)
    other = torch.randn_like(x)
    with torch.no_grad():
        expected, actual = program(other)["logits"], module(other).logits
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.zoo  # breadth (16 s): the ViT whose image size equals its hidden size holds the mechanism in make test
def test_mobilevit_round_trip_with_a_head_count_equal_to_a_head_dim(tmp_path):
    # four heads of 4 dims: write-back sets the head count by value to 2 where the head dim became 2; the class
    # built from the config keeps the 4 heads
    def build():
        config = transformers.MobileViTConfig(image_size=64, num_labels=5, hidden_sizes=[16, 24, 32],
                                              neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64])
        return transformers.MobileViTForImageClassification(config), torch.randn(1, 3, 64, 64)

    model, x, program = _pruned(build, {**UNIFORM, "round_to": 1})
    config = _round_trip(model, program, x, tmp_path / "mobilevit")
    assert config.hidden_sizes == [8, 12, 16] and config.num_attention_heads == 4
