"""What the small classifiers share: the Fashion-MNIST input and class counts, conv + batch norm, CNN initialisation."""

from torch import nn

FMNIST_IMAGE_SIZE = 28
FMNIST_CHANNELS = 1
FMNIST_CLASSES = 10


def init_cnn(model: nn.Module) -> None:
    """He (fan-out) initialisation for convolutions, unit-scale batch norms, small linear weights."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution without bias ('same' padding for odd kernels) followed by batch norm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))
