"""The IBB's controls (``ibb.control``): the cosine-prototype loss on the IBB's own centroids and Q,
scaled each step to the IBB's gradient norm on the feature, and the IBB with Q refreshed from shuffled
labels; the key's validation; one training step of each on the tiny config."""
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ribkernels.engine import Trainer, build_parser, components, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")


def test_prototypes_from_centroids_and_q():
    torch.manual_seed(0)
    c = F.normalize(torch.randn(4, 6), dim=1)
    # clusters 0,1 hold identity 0; 2 holds identity 1; 3 holds identity 2 (one-hot Q, then smoothed)
    q = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    lam = 0.1
    ibb = SimpleNamespace(centroids=c, log_q=((1 - lam) * q + lam / 3).log(), q_smoothing=lam)
    p = components.control_prototypes(ibb)
    want = F.normalize(torch.stack([(c[0] + c[1]) / 2, c[2], c[3]]), dim=1)
    torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-6)  # the smoothing is undone
    f = torch.randn(5, 6)
    y = torch.tensor([0, 1, 2, 0, 1])
    ref = F.cross_entropy(16.0 * F.normalize(f, dim=1) @ want.T, y)
    torch.testing.assert_close(components.prototype_loss(ibb, f, y), ref, rtol=1e-5, atol=1e-6)


def test_matched_scale_equalises_gradient_norms():
    f = torch.randn(6, 5, requires_grad=True)
    target = 0.3 * (f ** 2).sum()
    control = (f * torch.arange(5.0)).sum()
    s = components.matched_scale(target, control, f)
    g_t, = torch.autograd.grad(target, f, retain_graph=True)
    g_c, = torch.autograd.grad(s * control, f)
    assert g_c.norm().item() == pytest.approx(g_t.norm().item(), rel=1e-5)
    zero = components.matched_scale(target, 0.0 * f.sum(), f)
    assert zero.item() == 0.0


def test_shuffled_labels_are_a_fixed_permutation():
    y = torch.arange(50)
    a = components.shuffled_labels(y, 1, 3, 0)
    assert sorted(a.tolist()) == list(range(50)) and not torch.equal(a, y)
    assert torch.equal(a, components.shuffled_labels(y, 1, 3, 0))
    assert not torch.equal(a, components.shuffled_labels(y, 1, 4, 0))


def _cfg(tmp_path, *extra):
    argv = ["--config", TINY, "--data-root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"),
            "--progress", "log", "--ibb-start-epoch", "0", *extra]
    return resolve(build_parser().parse_args(argv))


def test_control_key_validation(tmp_path):
    assert _cfg(tmp_path)["ibb"]["control"] == "none"
    with pytest.raises(ValueError, match="ibb.control"):
        _cfg(tmp_path, "--set", "ibb.control=centre")
    with pytest.raises(ValueError, match=r"ibb.control = 'prototype'.*ibb.enabled"):
        _cfg(tmp_path, "--set", "ibb.control=prototype", "--set", "ibb.enabled=false")


@pytest.mark.parametrize("control", ["prototype", "shuffled_q"])
def test_one_step_with_each_control(tmp_path, control):
    trainer = Trainer(_cfg(tmp_path, "--set", f"ibb.control={control}"))
    try:
        trainer._maybe_refresh_ibb(0)
        idx = components.epoch_indices(trainer.data, trainer.cfg, 0, 0, 0, 1)[: trainer.local_batch]
        batch = next(iter(trainer.data.train_loader(trainer.cfg, idx, trainer.local_batch, seed=0)))
        if control == "shuffled_q":
            # the same features and k-means as an honest refresh, but Q from shuffled labels
            honest = Trainer(_cfg(tmp_path / "h"))
            try:
                honest._maybe_refresh_ibb(0)
                torch.testing.assert_close(honest.ibb.centroids, trainer.ibb.centroids)
                assert not torch.allclose(honest.ibb.log_q, trainer.ibb.log_q)
            finally:
                honest.close()
        before = [p.detach().clone() for p in trainer.model.parameters()]
        terms = trainer.train_step(batch, 0)
        assert torch.isfinite(terms["loss"]) and "ibb" in terms and terms["ibb_grad_ratio"] > 0
        if control == "prototype":
            assert terms["control_scale"] > 0 and torch.isfinite(terms["control_loss"])
        else:
            assert "control_scale" not in terms
        assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    finally:
        trainer.close()


def test_prototype_control_gradient_matches_the_ibb(tmp_path):
    """In the prototype control the applied term's feature gradient has the norm η·IBB's would have had."""
    trainer = Trainer(_cfg(tmp_path, "--set", "ibb.control=prototype"))
    try:
        trainer._maybe_refresh_ibb(0)
        idx = components.epoch_indices(trainer.data, trainer.cfg, 0, 0, 0, 1)[: trainer.local_batch]
        batch = next(iter(trainer.data.train_loader(trainer.cfg, idx, trainer.local_batch, seed=0)))
        images, pids, cams, _ = components.unpack(batch, trainer.device)
        trainer.model.train()
        out = trainer.model(images, cam_label=cams)
        feat = out["global_bn_feat" if trainer.cfg["ibb"]["feature"] == "after" else "global_feat"]
        eta = trainer.cfg["loss"]["eta"]
        ibb, _, _ = components.ibb_terms(trainer.ibb, feat.float(), pids, images)
        ctrl = components.prototype_loss(trainer.ibb, feat, pids)
        s = components.matched_scale(eta * ibb, ctrl, feat)
        g_ibb, = torch.autograd.grad(eta * ibb, feat, retain_graph=True)
        g_ctl, = torch.autograd.grad(s * ctrl, feat, retain_graph=True)
        assert g_ctl.norm().item() == pytest.approx(g_ibb.norm().item(), rel=1e-4)
        cos = F.cosine_similarity(g_ctl.flatten(), g_ibb.flatten(), dim=0).item()
        assert cos < 0.999  # a different direction: not the IBB in disguise
    finally:
        trainer.close()
