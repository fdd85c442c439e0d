"""ID cross-entropy with label smoothing and the batch-hard triplet loss, against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from ribkernels.reid import CrossEntropyLabelSmooth, TripletLoss


def test_ce_label_smooth_hand_computed():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    eps = 0.1
    loss = CrossEntropyLabelSmooth(3, eps)(logits, y)
    expected = 0.0
    for row, t in zip(logits.tolist(), y.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        logp = [v - lse for v in row]
        expected += -sum(((1 - eps) * (k == t) + eps / 3) * logp[k] for k in range(3))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-12)
    plain = CrossEntropyLabelSmooth(3, 0.0)(logits, y)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
    logits.requires_grad_(True)
    torch.autograd.gradcheck(lambda z: CrossEntropyLabelSmooth(3, 0.2)(z, y), (logits,))
    with pytest.raises(ValueError, match="logits"):
        CrossEntropyLabelSmooth(4)(logits, y)
    with pytest.raises(ValueError, match="targets"):
        CrossEntropyLabelSmooth(3)(logits, y.float())


def _feats():
    # 1-D points: a at 0 and 1 (label 0), b at 3 and 2.5 (label 1)
    return torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [2.5, 0.0]], dtype=torch.float64), torch.tensor([0, 0, 1, 1])


def test_triplet_margin_hand_computed():
    x, y = _feats()
    loss, ap, an = TripletLoss(margin=0.3)(x, y)
    # hardest positive / negative per anchor: (1, 2.5), (1, 1.5), (0.5, 2), (0.5, 1.5)
    torch.testing.assert_close(ap, torch.tensor([1.0, 1.0, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(an, torch.tensor([2.5, 1.5, 2.0, 1.5], dtype=torch.float64))
    assert loss.item() == 0.0  # every hinge inactive at margin 0.3
    big, _, _ = TripletLoss(margin=1.2)(x, y)
    assert big.item() == pytest.approx((0 + 0.7 + 0 + 0.2) / 4)


def test_triplet_soft_margin_and_grad():
    x, y = _feats()
    loss, _, _ = TripletLoss(margin=None)(x, y)
    expected = sum(math.log1p(math.exp(d)) for d in (1 - 2.5, 1 - 1.5, 0.5 - 2.0, 0.5 - 1.5)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    z = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    torch.autograd.gradcheck(lambda t: TripletLoss(margin=None, normalize_feature=True)(t, labels)[0], (z,))


def test_triplet_edge_cases():
    x = torch.randn(4, 3, requires_grad=True)
    loss, _, _ = TripletLoss()(x, torch.zeros(4, dtype=torch.long))  # no negatives anywhere
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(x.grad == 0)
    with pytest.raises(ValueError, match="labels"):
        TripletLoss()(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-1.0)
