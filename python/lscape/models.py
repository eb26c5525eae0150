"""Reference networks that the benchmarks, tests and examples share: the models researchers study.

Plain torch modules, nothing lscape-specific, so a peer tool (PyHessian, loss-landscapes) runs on
exactly the same network in a side-by-side benchmark.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet20"]


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (a 1x1 conv + BN where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016, section 4.2): 3 stages of n basic blocks, 16/32/64 channels
    times `width`, global average pooling, one linear layer."""

    def __init__(self, n: int = 3, width: int = 1, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        c = [16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c[0])
        blocks, cin = [], c[0]
        for stage, cout in enumerate(c):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def resnet20(width: int = 1, num_classes: int = 10, in_channels: int = 3, *, seed: int | None = 0,
             eval_mode: bool = True) -> ResNet:
    """ResNet-20 for 32x32 inputs (x: (N, in_channels, 32, 32) -> logits (N, num_classes)).

    D = 272,474 parameters at width 1, 1.09 M at width 2, 4.33 M at width 4, 27 M at width 10.
    `seed` fixes the initial weights (None: torch's global generator). With `eval_mode` the module is
    returned in eval mode with non-trivial BatchNorm running statistics (drawn from the same seed), as a
    trained network's would be, so BatchNorm is a real per-channel affine map and not the identity.
    """
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width: expected a positive int, got {width!r}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = ResNet(3, width, num_classes, in_channels)
    if eval_mode:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                    m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
        model.eval()
    return model
