"""Channel-shared DCS (one mask per image or per step, shared by all tokens, applied to q alone):
float64 against the two-sided eager DCS reference, the noise contract, the eval fold, errors,
strict loading of plain ViT weights into patched models, logging, export."""
import copy
import logging
import os

import pytest
import timm
import torch
from torch import nn

import ribkernels as rk
from ribkernels.dcs import channel_shared as cs
from ribkernels.nn import DCSAttention
from ribkernels.nn.dcs_attention import fold_eval_masks

F64 = torch.float64


def two_sided_reference(q, k, v, theta, noise, tau=1.0, training=True):
    """The package's eager DCS (scores in memory, q AND k masked, ordinary straight-through mask)
    with θ broadcast per channel and the same noise: what channel-shared DCS must equal."""
    H, D = theta.shape
    return rk.dcs_attention(q, k, v, theta.reshape(1, H, 1, D), noise=noise, tau=tau, training=training,
                            impl="eager")


def leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def mixed_theta(H, D, dtype=F64):
    """Logits in [-2, 2]: masks neither all-ones nor all-zeros."""
    return (torch.rand(H, D, dtype=dtype) * 4 - 2)


@pytest.mark.parametrize("mask_per", ["image", "step"])
@pytest.mark.parametrize("B,H,N,D,tau", [(2, 3, 17, 5, 1.0), (3, 2, 1, 16, 0.5), (1, 4, 53, 8, 2.0)])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_float64_forward_and_gradients_equal_the_two_sided_form(mask_per, B, H, N, D, tau, impl):
    q, k, v = (torch.randn(B, H, N, D, dtype=F64) for _ in range(3))
    theta = mixed_theta(H, D)
    shape = cs.mask_shape(H, D, B, mask_per)
    noise = rk.logistic_noise(shape, seed=7).to(F64)
    grad_out = torch.randn(B, H, N, D, dtype=F64)
    got_in = leaves(q, k, v, theta)
    got = cs.channel_shared_attention(*got_in, noise=noise, tau=tau, mask_per=mask_per, impl=impl)
    got.backward(grad_out)
    want_in = leaves(q, k, v, theta)
    want = two_sided_reference(*want_in, noise, tau=tau)
    want.backward(grad_out)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, g, w in zip(["dq", "dk", "dv", "dθ"], got_in, want_in):
        torch.testing.assert_close(g.grad, w.grad, rtol=1e-10, atol=1e-12, msg=name)
    if N > 1:  # (one token: the output is v, no gradient reaches q, k or θ)
        assert want_in[3].grad.abs().sum() > 0  # a real gradient to θ was compared
    mask = cs.channel_shared_mask(theta, B, noise=noise, mask_per=mask_per)
    assert 0 < mask.mean() < 1 and mask.shape == shape


def test_mask_per_image_differs_between_images_and_per_step_does_not():
    B, H, D = 4, 3, 32
    theta = torch.zeros(H, D)
    per_image = cs.channel_shared_mask(theta, B, seed=3)
    per_step = cs.channel_shared_mask(theta, B, seed=3, mask_per="step")
    assert per_image.shape == (B, H, 1, D) and per_step.shape == (1, H, 1, D)
    assert not torch.equal(per_image[0], per_image[1])
    torch.testing.assert_close(per_step, per_image[:1], rtol=0, atol=0)  # the stream's first H·D draws


@pytest.mark.parametrize("mask_per", ["image", "step"])
def test_seeded_call_equals_explicit_contract_noise(mask_per):
    B, H, N, D = 3, 2, 11, 24
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    theta = mixed_theta(H, D, torch.float32)
    seed, offset = 2**62 + 5, 9
    shape = cs.mask_shape(H, D, B, mask_per)
    noise = rk.logistic_noise(shape, seed, offset=offset)
    u = cs.contract_uniform_like(shape, seed, offset)
    mask = cs.channel_shared_mask(theta, B, seed=seed, offset=offset, mask_per=mask_per)
    torch.testing.assert_close(mask, (u > torch.sigmoid(-theta.reshape(1, H, 1, D))).float(), rtol=0, atol=0)
    torch.testing.assert_close(mask, cs.channel_shared_mask(theta, B, noise=noise, mask_per=mask_per), rtol=0, atol=0)
    torch.testing.assert_close(mask, cs.channel_shared_mask(theta, B, seed=torch.tensor(seed), offset=offset,
                                                            mask_per=mask_per), rtol=0, atol=0)
    grad_out = torch.randn(B, H, N, D)
    outs, grads = [], []
    for kw in (dict(seed=seed, offset=offset), dict(noise=noise)):
        ins = leaves(q, k, v, theta)
        out = cs.channel_shared_attention(*ins, mask_per=mask_per, **kw)
        out.backward(grad_out)
        outs.append(out)
        grads.append([t.grad for t in ins])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-6)  # soft from u vs from L in float32
    other = cs.channel_shared_attention(q, k, v, theta, seed=seed, offset=offset + 1, mask_per=mask_per)
    assert not torch.equal(other, outs[0])


def test_unseeded_mask_follows_torch_manual_seed():
    theta = torch.zeros(2, 16)
    torch.manual_seed(1)
    a = cs.channel_shared_mask(theta, 3)
    torch.manual_seed(1)
    torch.testing.assert_close(cs.channel_shared_mask(theta, 3), a, rtol=0, atol=0)


def test_eval_mask_is_theta_positive_and_has_no_gradient():
    theta = mixed_theta(3, 8).requires_grad_(True)
    mask = cs.channel_shared_mask(theta, 5, training=False)
    assert mask.shape == (1, 3, 1, 8) and not mask.requires_grad
    torch.testing.assert_close(mask, (theta.detach() > 0).double().reshape(1, 3, 1, 8), rtol=0, atol=0)


def test_theta_of_the_wrong_shape_for_the_mode_is_a_clear_error():
    q = k = v = torch.randn(2, 3, 5, 8)
    with pytest.raises(ValueError, match=r"mask_logits for mask_mode='channel_shared' must be \[H, D\] = \[3, 8\].*"
                                         r"shape \(1, 3, 1, 8\)"):
        cs.channel_shared_attention(q, k, v, torch.zeros(1, 3, 1, 8))
    with pytest.raises(ValueError, match=r"must be \[H, D\] = \[3, 8\].*shape \(3, 4\)"):
        cs.channel_shared_attention(q, k, v, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"mask_logits for mask_mode='channel_shared' must be \[H, D\].*\(24,\)"):
        cs.channel_shared_mask(torch.zeros(24), 2)
    with pytest.raises(ValueError, match=r"noise .* does not broadcast to the mask's shape \(2, 3, 1, 8\)"):
        cs.channel_shared_mask(torch.zeros(3, 8), 2, noise=torch.zeros(2, 3, 5, 8))
    with pytest.raises(ValueError, match="mask_per must be one of"):
        cs.channel_shared_mask(torch.zeros(3, 8), 2, mask_per="token")
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        cs.channel_shared_mask(torch.zeros(3, 8), 0)
    with pytest.raises(ValueError, match="mask_logits contains NaN"):
        cs.channel_shared_mask(torch.full((3, 8), float("nan")), 2)
    with pytest.raises(ValueError, match="impl must be 'sdpa' or 'eager'"):
        cs.channel_shared_attention(q, k, v, torch.zeros(3, 8), impl="triton")
    # the module: the mode's θ shape on load, the mode's options
    attn = DCSAttention(24, num_heads=3, mask_mode="channel_shared")
    with pytest.raises(RuntimeError, match=r"mask_logits: θ of shape \(1, 3, 1, 8\) does not fit "
                                           r"mask_mode='channel_shared', which expects \[H, D\] = \[3, 8\]"):
        attn.load_state_dict({**attn.state_dict(), "mask_logits": torch.zeros(1, 3, 1, 8)})
    with pytest.raises(ValueError, match="mask_per='step' applies to mask_mode='channel_shared' only"):
        DCSAttention(24, num_heads=3, mask_mode="channel", mask_per="step")
    with pytest.raises(ValueError, match="impl='triton': mask_mode='channel_shared' runs plain attention"):
        DCSAttention(24, num_heads=3, mask_mode="channel_shared", impl="triton")
    attn.mask_logits = nn.Parameter(torch.zeros(3, 4))  # replaced by hand with a wrong shape
    with pytest.raises(ValueError, match=r"must be \[H, D\] = \[3, 8\]"):
        attn(torch.randn(2, 5, 24))


# ---------------------------------------------------------------------------------------- module
def module_reference(attn: DCSAttention, x, noise, training=True):
    """DCSAttention's output computed the long way: qkv projection, the two-sided eager DCS of the
    module's θ (broadcast per channel) with ``noise``, the output projection."""
    B, N, C = x.shape
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, attn.num_heads,
                                                                                  attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if not training:
        noise = None
    out = two_sided_reference(q, k, v, attn.mask_logits, noise, tau=attn.tau, training=training)
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("mask_per,qk_norm,qkv_bias", [("image", False, True), ("step", False, True),
                                                      ("step", True, True), ("image", True, True),
                                                      ("step", False, False), ("image", False, False)])
def test_module_training_float64_equals_reference(mask_per, qk_norm, qkv_bias):
    """The per-step mask goes through the qkv weights (no qk_norm) or scales q (qk_norm)."""
    B, N, C, H = 3, 13, 24, 3
    attn = DCSAttention(C, num_heads=H, mask_mode="channel_shared", mask_per=mask_per, qk_norm=qk_norm,
                        qkv_bias=qkv_bias, tau=0.7).double()
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(H, C // H))
    ref = copy.deepcopy(attn)
    x = torch.randn(B, N, C, dtype=F64)
    noise = rk.logistic_noise(cs.mask_shape(H, C // H, B, mask_per), seed=2).double()
    grad_out = torch.randn(B, N, C, dtype=F64)
    xs = leaves(x, x)
    got = attn(xs[0], noise=noise)
    want = module_reference(ref, xs[1], noise)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward(grad_out)
    want.backward(grad_out)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-10, atol=1e-12)
    for (name, p), (_, r) in zip(attn.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert ref.mask_logits.grad.abs().sum() > 0
    # a seed gives the contract's mask: equal to the explicit noise of the mask's shape
    torch.testing.assert_close(attn(x, seed=5, offset=2),
                               attn(x, noise=rk.logistic_noise(cs.mask_shape(H, C // H, B, mask_per), 5, 2).double()),
                               rtol=0, atol=0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_module_eval_fold_equals_the_unfolded_computation(qk_norm):
    B, N, C, H = 2, 9, 32, 4
    attn = DCSAttention(C, num_heads=H, mask_mode="channel_shared", qk_norm=qk_norm).double().eval()
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(H, C // H))
    x = torch.randn(B, N, C, dtype=F64)
    with torch.no_grad():
        got = attn(x)
        want = module_reference(attn, x, None, training=False)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        unmasked = DCSAttention(C, num_heads=H, mask_mode="channel_shared", qk_norm=qk_norm).double().eval()
        unmasked.load_state_dict({k: v for k, v in attn.state_dict().items() if k != "mask_logits"})
        assert not torch.allclose(unmasked(x), got)  # the mask matters here
        if not qk_norm:
            w, b = cs.fold_eval_mask(attn.qkv.weight, attn.qkv.bias, attn.mask_logits)
            dim = C
            keep = (attn.mask_logits > 0).reshape(dim)
            assert not w[:dim][~keep].any() and torch.equal(w[dim:], attn.qkv.weight[dim:])
            torch.testing.assert_close(w[:dim][keep], attn.qkv.weight[:dim][keep], rtol=0, atol=0)
            assert torch.equal(b[:dim], attn.qkv.bias[:dim] * keep)
    # eval with gradients enabled (not cached): same output, gradient reaches the weights
    xg = x.clone().requires_grad_(True)
    out = attn(xg)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert attn.qkv.weight.grad is not None and attn.mask_logits.grad is None


def test_eval_fold_cache_follows_changes_of_theta_and_weights():
    attn = DCSAttention(16, num_heads=2, mask_mode="channel_shared").eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(2, 8, torch.float32))
        first = attn(x)
        cached = attn._fold_cache
        assert attn(x) is not None and attn._fold_cache is cached  # reused
        attn.mask_logits.mul_(-1)  # in place, as an optimizer step
        flipped = attn(x)
        torch.testing.assert_close(flipped, module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-6)
        attn.mask_logits.data.mul_(-1)  # through .data (no version bump): θ is compared too
        torch.testing.assert_close(attn(x), first, rtol=0, atol=0)
        attn.qkv.weight.add_(1.0)  # the weights change
        torch.testing.assert_close(attn(x), module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(attn(x), module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_to_plain_attention_and_fold_eval_masks(qkv_bias):
    from timm.models.vision_transformer import Attention

    attn = DCSAttention(32, num_heads=4, mask_mode="channel_shared", qkv_bias=qkv_bias).eval()
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(4, 8, torch.float32))
    x = torch.randn(2, 7, 32)
    plain = attn.to_plain_attention()
    assert type(plain) is Attention and (plain.qkv.bias is not None) == qkv_bias
    with torch.no_grad():
        torch.testing.assert_close(plain(x), attn(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(plain(x), module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be folded"):
        DCSAttention(32, num_heads=4, mask_mode="token").to_plain_attention()
    with pytest.raises(ValueError, match="with qk_norm cannot be folded"):
        DCSAttention(32, num_heads=4, mask_mode="channel", qk_norm=True).to_plain_attention()
    model = nn.Sequential(attn, DCSAttention(32, num_heads=4, mask_mode="token"),
                          DCSAttention(32, num_heads=4, mask_mode="channel")).eval()
    assert fold_eval_masks(model) == 2
    assert [type(m).__name__ for m in model] == ["Attention", "DCSAttention", "Attention"]


# ---------------------------------------------------------------------------------------- patch_vit
def small_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 32), num_classes=5,
                             depth=2, **kw)


@pytest.mark.parametrize("mask_mode", ["token", "channel", "channel_shared"])
def test_plain_vit_weights_load_strictly_into_a_patched_model(mask_mode):
    vit = small_vit().eval()
    sd = vit.state_dict()
    model = small_vit().eval()
    rk.patch_vit(model, mask_mode=mask_mode, init_logit=2.0)
    for m in model.modules():  # a trained mask, to see it reset to the default
        if isinstance(m, DCSAttention):
            with torch.no_grad():
                (m.mask_logits.bias if mask_mode == "token" else m.mask_logits).fill_(-1.0)
    result = model.load_state_dict(sd)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    for m in model.modules():
        if isinstance(m, DCSAttention):
            theta = m.mask_logits.bias if mask_mode == "token" else m.mask_logits
            assert torch.equal(theta, torch.full_like(theta, 2.0))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), rtol=1e-5, atol=1e-5)
    # a patched model's own state dict round-trips (the mask logits are kept, not reset)
    for m in model.modules():
        if isinstance(m, DCSAttention):
            with torch.no_grad():
                (m.mask_logits.bias if mask_mode == "token" else m.mask_logits).fill_(0.5)
    other = small_vit()
    rk.patch_vit(other, mask_mode=mask_mode)
    other.load_state_dict(model.state_dict())
    for a, b in zip(other.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_wrong_mask_shape_raises_before_any_tensor_is_copied():
    model = small_vit()
    rk.patch_vit(model, mask_mode="channel_shared")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: torch.randn_like(v) for k, v in small_vit().state_dict().items()}
    sd["blocks.1.attn.mask_logits"] = torch.zeros(1, 3, 1, 64)  # [1, H, 1, D]: the channel mode's old layout
    with pytest.raises(RuntimeError, match=r"(?s)nothing was loaded.*blocks\.1\.attn\.mask_logits: θ of shape "
                                           r"\(1, 3, 1, 64\) does not fit mask_mode='channel_shared'"):
        model.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="nothing was loaded"):
        model.load_state_dict(sd, strict=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_patch_vit_is_atomic():
    class Odd(nn.Module):  # a timm-like attention whose qkv does not fit DCSAttention
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim = 2, 8
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
            self.q_norm = self.k_norm = self.norm = nn.Identity()
            self.proj_drop = nn.Dropout(0.0)
            self.extra = nn.Linear(2, 2)

    from timm.models.vision_transformer import Attention

    model = nn.Sequential(Attention(16, num_heads=2), Odd())
    with pytest.raises(RuntimeError, match="weights did not transfer"):
        rk.patch_vit(model, attn_types=[Attention, Odd])
    assert type(model[0]) is Attention and type(model[1]) is Odd  # nothing replaced


def test_patch_vit_logs_once_for_the_same_model_built_twice(caplog, monkeypatch):
    """Trainer(eval_only) and evaluate_checkpoint each build the model: one INFO line."""
    from ribkernels.models import build_model
    from ribkernels.nn import dcs_attention

    monkeypatch.setitem(dcs_attention._LOGGED, "keys", set())  # as in a fresh process

    kw = dict(attn_impl="dcs", dcs_kwargs=dict(mask_mode="channel_shared", tau=0.9), img_size=(64, 32))
    with caplog.at_level(logging.DEBUG, logger="ribkernels.nn.dcs_attention"):
        build_model("vit_tiny_cpu", 5, **kw)
        build_model("vit_tiny_cpu", 5, **kw)
    records = [r for r in caplog.records if r.getMessage().startswith("patch_vit:")]
    assert len(records) == 2 and [r.levelno for r in records] == [logging.INFO, logging.DEBUG]
    assert "mask_mode channel_shared" in records[0].getMessage()


def test_transreid_channel_shared_trains_and_equals_sdpa_in_eval():
    from ribkernels.models import build_model

    torch.manual_seed(0)
    ref = build_model("vit_tiny_cpu", 5, img_size=(64, 32), attn_impl="sdpa", camera_num=0)
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32), attn_impl="dcs", camera_num=0,
                        dcs_kwargs=dict(mask_mode="channel_shared", init_logit=0.0))
    assert not model.load_state_dict(ref.state_dict(), strict=False).missing_keys
    x = torch.randn(4, 3, 64, 32)
    out = model.train()(x)
    sum(l.sum() for l in out["logits"]).backward()
    thetas = [m.mask_logits for m in model.modules() if isinstance(m, DCSAttention)]
    assert len(thetas) == 3 and all(t.grad is not None and t.grad.abs().sum() > 0 for t in thetas)
    for t in thetas:
        with torch.no_grad():
            t.fill_(1.0)  # every channel kept in eval: the plain model
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_exported_channel_shared_vit_runs_in_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = small_vit().eval()
    rk.patch_vit(model, mask_mode="channel_shared")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DCSAttention):
                m.mask_logits.copy_(mixed_theta(*m.mask_logits.shape, torch.float32))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        want = model(x)
    exported = copy.deepcopy(model)
    assert fold_eval_masks(exported) == 2
    assert not any(isinstance(m, DCSAttention) for m in exported.modules())
    path = str(tmp_path / "vit.onnx")
    with torch.no_grad():
        torch.onnx.export(exported, (x,), path, input_names=["images"], output_names=["out"], dynamo=True,
                          verbose=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mask_per", ["image", "step"])
def test_compiles_without_graph_breaks_in_training_and_eval(mask_per):
    torch._dynamo.reset()
    attn = DCSAttention(16, num_heads=2, mask_mode="channel_shared", mask_per=mask_per)
    compiled = torch.compile(attn, fullgraph=True, backend="eager")
    x = torch.randn(2, 5, 16)
    noise = rk.logistic_noise(cs.mask_shape(2, 8, 2, mask_per), seed=1)
    torch.testing.assert_close(compiled(x, noise=noise), attn(x, noise=noise))
    attn.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), attn(x))
        compiled(torch.randn(3, 7, 16))  # another batch and length


@pytest.fixture(scope="module")
def channel_shared_run(tmp_path_factory):
    """A tiny RIB-DCS training run in mask_mode channel_shared (train.py's trainer, seconds)."""
    from ribkernels.engine import main as train_main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = tmp_path_factory.mktemp("chshared")
    argv = ["--config", os.path.join(root, "configs", "synthetic_tiny_test.yaml"), "--data-root",
            str(base / "synthetic"), "--output-dir", str(base / "run"), "--progress", "log", "--epochs", "1",
            "--dcs-mask-mode", "channel_shared", "--dcs-init-logit", "0.5"]
    assert train_main(argv) == 0
    return base / "run"


def test_evaluate_logs_patch_vit_once_and_export_writes_a_plain_graph(channel_shared_run, tmp_path, capsys):
    import glob

    from ribkernels import cli

    ckpt = str(channel_shared_run / "final.pth")
    out = tmp_path / "ev"
    assert cli.main(["evaluate", ckpt, "--output-dir", str(out)]) == 0
    (log,) = glob.glob(str(out / "eval-*.log"))
    lines = [l for l in open(log).read().splitlines() if "patch_vit:" in l]
    assert len(lines) == 1 and "mask_mode channel_shared" in lines[0], lines
    capsys.readouterr()
    onnx_path = tmp_path / "model.onnx"
    assert cli.main(["export", ckpt, "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert "max abs error" in capsys.readouterr().out
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert "MatMul" in ops and not {"Greater", "Sigmoid", "RandomUniformLike"} & ops, sorted(ops)


@pytest.mark.parametrize("mask_mode", ["token", "channel"])
def test_forward_seed_and_noise_reach_the_per_token_modes(mask_mode):
    attn = DCSAttention(16, num_heads=2, mask_mode=mask_mode, impl="sdpa", init_logit=0.0)
    x = torch.randn(2, 5, 16)
    a = attn(x, seed=11, offset=3)
    torch.testing.assert_close(attn(x, noise=rk.logistic_noise((2, 2, 5, 8), 11, offset=3)), a, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(attn(x, seed=12, offset=3), a)


def test_train_config_selects_channel_shared_and_the_mask_per_step():
    from types import SimpleNamespace

    from ribkernels.engine import components
    from ribkernels.engine.config import ConfigError, DEFAULTS, build_parser, resolve

    tiny = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "synthetic_tiny_test.yaml")
    cfg = resolve(build_parser().parse_args(["--config", tiny, "--dcs-mask-mode", "channel_shared",
                                             "--dcs-mask-per", "step"]))
    assert DEFAULTS["model"]["dcs_mask_per"] == "image"
    model = components.build_model(cfg, SimpleNamespace(num_classes=5, num_cams=3, num_views=0))
    attns = [m for m in model.modules() if isinstance(m, DCSAttention)]
    assert attns and all(m.mask_mode == "channel_shared" and m.mask_per == "step" for m in attns)
    with pytest.raises((ConfigError, SystemExit)):
        resolve(build_parser().parse_args(["--config", tiny, "--dcs-mask-per", "token"]))
    cfg["model"]["dcs_mask_mode"] = "token"
    with pytest.raises(ValueError, match="mask_per='step' applies to mask_mode='channel_shared' only"):
        components.build_model(cfg, SimpleNamespace(num_classes=5, num_cams=3, num_views=0))
