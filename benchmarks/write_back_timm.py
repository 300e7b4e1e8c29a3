"""Write back into its own module every timm model of a wide list (one or two of each family timm has, random
weights, each model's own input size) after pruning it to 0.5 of the MACs, and record which are written back
(checked again on a third input) and which are refused, with the reason. Breadth beyond
benchmarks/write_back_coverage.py, whose models the tests name.

    .venv/bin/python benchmarks/write_back_timm.py [--models resnet26t,...] [--append] [--timeout 600]

Each model runs in a process of its own (a model that hangs or crashes the interpreter is a row, not the end
of the run: benchmarks/write_back_breadth.py), one thread; remove_channels(macs=0.5, round_to=8, strict=False) as
in write_back_coverage.
"""

from __future__ import annotations

import torch
from write_back_breadth import breadth_main

MODELS = (
    # timm's own test models
    "test_byobnet test_coatnet test_convnext test_efficientnet test_efficientnet_gn test_efficientnet_ln "
    "test_mambaout test_maxvit test_nfnet test_resnet test_vit2 test_vit3 test_vit4 test_vit_relpos "
    # convolutional
    "resnet18d resnet26t resnetrs50 resnetblur18 resnetaa34d seresnext26d_32x4d ecaresnet26t legacy_seresnet18 "
    "skresnet18 resnest14d res2net50_14w_8s resnext26ts eca_resnext26ts bat_resnext26ts resnet50_gn "
    "resnetv2_50 resnetv2_50d_gn resnetv2_50d_evos dla34 dla46_c dla60x_c dpn48b dpn68 hrnet_w18_small "
    "hrnet_w18_small_v2 regnetx_002 regnety_002 regnetz_b16 cspresnet50 cspresnext50 cspdarknet53 darknet17 "
    "cs3darknet_focus_s ese_vovnet19b_dw ese_vovnet19b_slim_dw densenetblur121d vgg11 inception_v3 inception_v4 "
    "xception41 selecsls42b gernet_s hgnet_tiny hgnetv2_b0 nf_resnet26 nf_regnet_b0 eca_nfnet_l0 dm_nfnet_f0 "
    "repvgg_a0 mobileone_s0 convnextv2_atto convnext_nano rdnet_tiny starnet_s1 starnet_s2 fasternet_t0 "
    "fasternet_t1 mambaout_femto mambaout_kobe inception_next_tiny poolformerv2_s12 convformer_s18 caformer_s18 "
    # mobile
    "mobilenetv1_100 mobilenetv3_small_050 mobilenetv4_conv_small mobilenetv4_conv_medium efficientnet_lite0 "
    "efficientnetv2_rw_t tf_efficientnet_b0 tf_efficientnetv2_b0 tf_mixnet_s tf_mobilenetv3_small_100 mixnet_s "
    "mixnet_m mnasnet_small semnasnet_050 spnasnet_100 fbnetc_100 hardcorenas_a tinynet_e lcnet_050 rexnet_100 "
    "ghostnet_050 ghostnetv2_100 ghostnetv3_050 repghostnet_050 repvit_m0_9 repvit_m1 fastvit_mci0 fastvit_sa12 "
    "efficientformerv2_s0 efficientformerv2_s1 efficientvit_m0 efficientvit_b0 efficientvit_b1 shvit_s1 "
    "edgenext_xx_small mobilevit_xxs mobilevitv2_050 levit_conv_128s levit_conv_192 levit_256 "
    # attention with convolutions or local windows
    "botnet26t_256 halonet26t sehalonet33ts lambda_resnet26t lambda_resnet26rpt_256 haloregnetz_b "
    "coatnet_nano_rw_224 maxvit_nano_rw_256 maxvit_rmlp_pico_rw_256 maxxvitv2_nano_rw_256 tiny_vit_5m_224 "
    "pvt_v2_b0 pvt_v2_b1 twins_pcpvt_small twins_svt_small gcvit_xxtiny davit_tiny focalnet_tiny_srf nest_tiny "
    "swin_s3_tiny_224 swinv2_cr_tiny_ns_224 swinv2_tiny_window8_256 hiera_tiny_224 hiera_small_abswin_256 "
    "sam2_hiera_tiny mvitv2_tiny nextvit_small visformer_tiny coat_tiny crossvit_tiny_240 crossvit_9_240 "
    "pit_ti_224 convit_tiny convit_small volo_d1_224 vitamin_small_224 "
    # vision transformers and MLPs
    "vit_tiny_patch16_224 vit_little_patch16_reg4_gap_256 vit_medium_patch16_gap_256 "
    "vit_betwixt_patch16_reg4_gap_256 vit_tiny_r_s16_p8_224 vit_small_r26_s32_224 flexivit_small "
    "vit_small_patch16_rope_224 vit_small_patch16_dinov3 vit_srelpos_small_patch16_224 "
    "vit_relpos_small_patch16_224 vit_relpos_medium_patch16_cls_224 deit_tiny_distilled_patch16_224 "
    "eva02_tiny_patch14_224 eva02_small_patch14_224 cait_xxs24_224 xcit_nano_12_p16_224 xcit_tiny_12_p16_224 "
    "tnt_s_patch16_224 mixer_s16_224 gmixer_12_224 resmlp_12_224 gmlp_ti16_224 sequencer2d_s"
).split()


def one(name: str) -> dict:
    """Build, prune and write back one model (in this process), its row."""
    from write_back_coverage import write_back_one

    from prunefx.models import build_model
    torch.manual_seed(0)
    model = build_model(f"timm:{name}").module.eval()
    with torch.no_grad():  # zero-initialised layers randomised: a zero output would make the check vacuous
        for parameter in model.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.normal_(std=0.02)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    row = write_back_one(f"timm:{name}", model, (torch.randn(1, *size),), round_to=8)
    return {**row, "input": "x".join(map(str, (1, *size)))}


if __name__ == "__main__":
    raise SystemExit(breadth_main(__doc__.splitlines()[0], __file__, "write_back_timm",
                                  "Write-back of a wide list of timm models (pruned to 0.5 of the MACs)",
                                  MODELS, lambda name: f"timm:{name}", one))
