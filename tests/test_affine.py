"""The affine first-layer path (lscape._affine) equals plain evaluation, and stays off where it must."""
import lscape
import numpy as np
import pytest
import torch
from lscape._affine import first_layer
from lscape.directions import random_directions
from torch import nn


class _Normalised(nn.Module):
    """Input scaled by a parameter before the first layer: the affine trick must not apply."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x * self.scale)


def _models():
    torch.manual_seed(0)
    return [
        (nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)), (8,), True),
        (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                       nn.Linear(4 * 64, 3)), (1, 8, 8), True),
        (_Normalised(), (8,), False),
    ]


@pytest.mark.parametrize("k", range(3))
def test_affine_equals_plain(k):
    model, shape, eligible = _models()[k]
    model.eval()
    assert (first_layer(model) is not None) == eligible
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(50, *shape, generator=g), torch.randint(0, 3, (50,), generator=g)
    d = random_directions(model, 2, norm="layer", ignore=None, seed=2)
    fast = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=d, grid=5)
    plain = lscape.surface(model, nn.functional.cross_entropy, (X, Y), directions=d, grid=5, affine=False)
    np.testing.assert_allclose(fast["train_loss"], plain["train_loss"], rtol=1e-5)
    np.testing.assert_array_equal(fast["train_acc"], plain["train_acc"])
