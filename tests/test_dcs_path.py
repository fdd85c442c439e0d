"""The call path of ``dcs_attention(impl="triton")`` (docs/architecture.md, "The data path of a DCS
call"): the public function, the dispatch, the backend's run, the custom op, then the launcher, with
no frame in between; the retired wrapper ``ops.dcs_attention_fused`` still works, with a warning."""
import traceback

import pytest
import torch

pytest.importorskip("triton")

import ribkernels as rk  # noqa: E402
from ribkernels.dcs.triton import launch, ops  # noqa: E402

pytestmark = pytest.mark.skipif(not launch.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest on CPU)")


def inputs():
    q, k, v = (torch.randn(1, 2, 9, 16, requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn(1, 2, 9, 16, requires_grad=True)


def test_frames_from_dcs_attention_to_the_launcher(monkeypatch):
    seen = []
    prepass = launch.masked_qk_prepass

    def spy(*args, **kwargs):
        seen.append([f"{f.filename.replace(chr(92), '/').split('/ribkernels/')[-1]}:{f.name}"
                     for f in traceback.extract_stack() if "/ribkernels/" in f.filename.replace(chr(92), "/")])
        return prepass(*args, **kwargs)

    monkeypatch.setattr(launch, "masked_qk_prepass", spy)
    q, k, v, mask_logits = inputs()
    rk.dcs_attention(q, k, v, mask_logits, seed=3, impl="triton").sum().backward()
    assert seen == [["dcs/attention.py:dcs_attention", "dcs/attention.py:run_backend",
                     "dcs/triton/backend.py:dcs_attention_triton", "dcs/triton/ops.py:dcs_attention_fwd"]]
    assert mask_logits.grad is not None and mask_logits.grad.abs().sum() > 0


def test_the_retired_fused_wrapper_warns_and_equals_the_backend():
    q, k, v, mask_logits = inputs()
    rng = launch.rng_state(5, 2, "cpu")
    with pytest.warns(DeprecationWarning, match="dcs_attention_fused is deprecated"):
        old = ops.dcs_attention_fused(q, k, v, mask_logits, None, rng, tau=0.5, scale=0.25, training=True)
    new = rk.dcs_attention(q, k, v, mask_logits, seed=5, offset=2, tau=0.5, scale=0.25, impl="triton")
    torch.testing.assert_close(old, new, rtol=0, atol=0)


def test_the_op_runs_the_forward_that_masks_q_itself(monkeypatch):
    """The pre-pass neither reads q nor writes q⊙M (``mask_q=False``); the forward gets raw q and the
    mask (docs/performance.md, v4) — and gives the q⊙M form's output bit for bit."""
    calls = {}
    prepass, forward = launch.masked_qk_prepass, launch.forward

    def spy_prepass(*args, **kwargs):
        calls["mask_q"] = kwargs.get("mask_q", True)
        return prepass(*args, **kwargs)

    def spy_forward(q, k, v, **kwargs):
        calls["q_mask"] = kwargs.get("q_mask") is not None
        calls["raw_q"] = q.data_ptr()
        return forward(q, k, v, **kwargs)

    monkeypatch.setattr(launch, "masked_qk_prepass", spy_prepass)
    monkeypatch.setattr(launch, "forward", spy_forward)
    q, k, v, mask_logits = inputs()
    out = rk.dcs_attention(q, k, v, mask_logits, seed=3, impl="triton")
    assert calls == {"mask_q": False, "q_mask": True, "raw_q": q.data_ptr()}  # the caller's q itself
    monkeypatch.undo()
    rng = launch.rng_state(3, 0, "cpu")
    mode = launch.mode_of(True, None)
    with torch.no_grad():
        mask, qm, km = launch.masked_qk_prepass(q, k, mask_logits, None, rng, mode)
        ref, _ = launch.forward(qm, km, v, scale=16 ** -0.5)
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0)
