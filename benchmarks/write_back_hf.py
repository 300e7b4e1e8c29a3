"""Write back into its own module a wide list of Hugging Face vision models (small configurations, random
weights) after pruning each to 0.5 of the MACs, and record which are written back (checked again on a third
input) and which are refused, with the reason. The module alone (`to_module(..., config=False)`): a config
holds one width per field, which the default global ranking does not give (tests/test_hf_round_trip.py
covers the config with uniform ranking).

    .venv/bin/python benchmarks/write_back_hf.py [--models vit,swin,...] [--append] [--timeout 600]

Each model runs in a process of its own, one thread; remove_channels(macs=0.5, round_to=8, strict=False) as in
write_back_timm.py (benchmarks/write_back_breadth.py runs them).
"""

from __future__ import annotations

import torch
from write_back_breadth import breadth_main

SIZE = 64  # the image side every model here takes
_VIT = {"image_size": SIZE, "patch_size": 16, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
_STAGES = {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1]}
_HEADS = {"num_attention_heads": [1, 2, 4, 8]}

# name -> (model class, config class, the config's arguments, or a function of transformers making the config)
MODELS = {
    "vit": ("ViTForImageClassification", "ViTConfig", {**_VIT, "intermediate_size": 128}),
    "deit": ("DeiTForImageClassification", "DeiTConfig", {**_VIT, "intermediate_size": 128}),
    "beit": ("BeitForImageClassification", "BeitConfig",
             {**_VIT, "intermediate_size": 128, "use_relative_position_bias": True}),
    "data2vec_vision": ("Data2VecVisionForImageClassification", "Data2VecVisionConfig",
                        {**_VIT, "intermediate_size": 128}),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", {**_VIT, "mlp_ratio": 2}),
    "dinov2_registers": ("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                         {**_VIT, "mlp_ratio": 2, "num_register_tokens": 4}),
    "ijepa": ("IJepaForImageClassification", "IJepaConfig", {**_VIT, "intermediate_size": 128}),
    "siglip": ("SiglipVisionModel", "SiglipVisionConfig", {**_VIT, "intermediate_size": 128}),
    "clip": ("CLIPVisionModel", "CLIPVisionConfig", {**_VIT, "intermediate_size": 128}),
    "yolos": ("YolosForObjectDetection", "YolosConfig",
              {**_VIT, "image_size": [SIZE, SIZE], "intermediate_size": 128, "num_detection_tokens": 10}),
    "vitdet": ("VitDetModel", "VitDetConfig", {**_VIT, "pretrain_image_size": SIZE, "mlp_ratio": 2}),
    "swin": ("SwinForImageClassification", "SwinConfig",
             {"image_size": SIZE, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4],
              "window_size": 4}),
    "swinv2": ("Swinv2ForImageClassification", "Swinv2Config",
               {"image_size": SIZE, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4],
                "window_size": 4}),
    "focalnet": ("FocalNetForImageClassification", "FocalNetConfig",
                 {"image_size": SIZE, "embed_dim": 16, "depths": [1, 1]}),
    "hiera": ("HieraForImageClassification", "HieraConfig",
              {"image_size": [SIZE, SIZE], "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig", _STAGES),
    "convnextv2": ("ConvNextV2ForImageClassification", "ConvNextV2Config", _STAGES),
    "resnet": ("ResNetForImageClassification", "ResNetConfig", {**_STAGES, "embedding_size": 16}),
    "regnet": ("RegNetForImageClassification", "RegNetConfig",
               {**_STAGES, "embedding_size": 16, "groups_width": 8}),
    "bit": ("BitForImageClassification", "BitConfig",
            {"hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "embedding_size": 32, "num_groups": 8}),
    "mobilenet_v1": ("MobileNetV1ForImageClassification", "MobileNetV1Config",
                     {"image_size": SIZE, "depth_multiplier": 0.25}),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", "MobileNetV2Config",
                     {"image_size": SIZE, "depth_multiplier": 0.35}),
    "mobilenet_v2_seg": ("MobileNetV2ForSemanticSegmentation", "MobileNetV2Config",
                         {"image_size": SIZE, "depth_multiplier": 0.35}),
    "efficientnet": ("EfficientNetForImageClassification", "EfficientNetConfig",
                     {"image_size": SIZE, "width_coefficient": 2.0, "depth_coefficient": 0.2}),
    "mobilevit": ("MobileViTForImageClassification", "MobileViTConfig",
                  {"image_size": SIZE, "hidden_sizes": [32, 48, 64], "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64]}),
    "mobilevitv2": ("MobileViTV2ForImageClassification", "MobileViTV2Config",
                    {"image_size": SIZE, "width_multiplier": 0.5}),
    "levit": ("LevitForImageClassification", "LevitConfig",
              {"image_size": SIZE, "hidden_sizes": [64, 96, 128], "num_attention_heads": [2, 3, 4],
               "depths": [1, 1, 1], "key_dim": [16, 16, 16]}),
    "swiftformer": ("SwiftFormerForImageClassification", "SwiftFormerConfig",
                    {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1]}),
    "poolformer": ("PoolFormerForImageClassification", "PoolFormerConfig", _STAGES),
    "pvt": ("PvtForImageClassification", "PvtConfig", {"image_size": SIZE, **_STAGES, **_HEADS}),
    "pvt_v2": ("PvtV2ForImageClassification", "PvtV2Config", {**_STAGES, **_HEADS}),
    "segformer": ("SegformerForSemanticSegmentation", "SegformerConfig", {**_STAGES, "decoder_hidden_size": 32}),
    "glpn": ("GLPNForDepthEstimation", "GLPNConfig", {**_STAGES, **_HEADS, "decoder_hidden_size": 16}),
    "dpt": ("DPTForDepthEstimation", "DPTConfig",
            {**_VIT, "num_hidden_layers": 4, "intermediate_size": 128, "backbone_out_indices": [0, 1, 2, 3],
             "neck_hidden_sizes": [16, 32, 64, 64], "fusion_hidden_size": 32}),
    "upernet_convnext": ("UperNetForSemanticSegmentation", "UperNetConfig",
                         lambda transformers: {"backbone_config": transformers.ConvNextConfig(
                             **_STAGES, out_features=["stage1", "stage2", "stage3", "stage4"]),
                             "hidden_size": 32, "auxiliary_in_channels": 64}),
}


def build(name: str) -> torch.nn.Module:
    import transformers
    model_class, config_class, arguments = MODELS[name]
    config = getattr(transformers, config_class)(**(arguments(transformers) if callable(arguments) else arguments))
    if "Classification" in model_class or "Segmentation" in model_class or "Detection" in model_class:
        config.num_labels = 5
    return getattr(transformers, model_class)(config).eval()


def one(name: str) -> dict:
    """Build, prune and write back one model (in this process), its row."""
    from write_back_coverage import write_back_one
    torch.manual_seed(0)
    model = build(name)
    with torch.no_grad():  # zero-initialised layers randomised, positive: a zero output (a ReLU after a negative
        # bias, as DPT's depth head ends) would make the check vacuous
        for parameter in model.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.normal_(std=0.02).abs_()
    row = write_back_one(f"hf:{name}", model, (torch.randn(1, 3, SIZE, SIZE),), round_to=8, config=False)
    return {**row, "input": f"1x3x{SIZE}x{SIZE}"}


if __name__ == "__main__":
    raise SystemExit(breadth_main(__doc__.splitlines()[0], __file__, "write_back_hf",
                                  "Write-back of a wide list of Hugging Face vision models (pruned to 0.5 of the MACs)",
                                  list(MODELS), lambda name: f"hf:{name}", one))
