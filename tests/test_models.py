"""The shared reference networks: parameter counts as documented, deterministic seeds, eval-mode BatchNorm
that is not the identity, and a named error for a bad width."""
import pytest
import torch
from lscape.models import resnet20


@pytest.mark.parametrize("width,count", [(1, 272_474), (2, 1_084_586)])
def test_resnet20_parameter_count(width, count):
    assert sum(p.numel() for p in resnet20(width).parameters()) == count


def test_resnet20_same_seed_same_weights_and_bn_is_not_identity():
    a, b, c = resnet20(seed=3), resnet20(seed=3), resnet20(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv.weight"], sc["conv.weight"])
    assert not a.training
    assert not torch.allclose(a.bn.running_var, torch.ones_like(a.bn.running_var))
    x = torch.randn(2, 3, 32, 32)
    assert a(x).shape == (2, 10)


def test_resnet20_rejects_bad_width():
    with pytest.raises(ValueError, match="width: expected a positive int, got 0"):
        resnet20(0)
