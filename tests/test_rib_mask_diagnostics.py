"""The DCS mask logits' weight decay as a config key (param groups, a tiny AdamW step, validation), and
the per-block mask variation logged beside the keep fractions (tokens vs channels, token-varying bits)."""
import os

import pytest
import torch

from ribkernels.engine import build_parser, resolve
from ribkernels.engine.rib_logging import dcs_modules, eval_keep_fractions, mask_variation
from ribkernels.engine.trainer import param_groups
from ribkernels.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")


def _model(mode="token"):
    torch.manual_seed(0)
    return build_model("vit_tiny_cpu", 5, img_size=(64, 32), attn_impl="dcs",
                       dcs_kwargs={"mask_mode": mode, "impl": "sdpa", "init_logit": 3.0})


def _mask_params(model):
    out = []
    for m in dcs_modules(model):
        ml = m.mask_logits
        out += list(ml.parameters()) if isinstance(ml, torch.nn.Module) else [ml]
    return out


def _ids(ps):
    return {id(p) for p in ps}


# ------------------------------------------------------------------------------ weight decay key
@pytest.mark.parametrize("mode", ["token", "channel"])
def test_param_groups_default_is_todays_and_the_key_splits_the_mask_logits(mode):
    model = _model(mode)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    old_decay = _ids(p for n, p in named if not n.endswith(".bias"))
    old_bias = _ids(p for n, p in named if n.endswith(".bias"))
    g = param_groups(model, 1e-3, 0.05, 2.0, None)
    assert [(_ids(x["params"]), x["lr"], x["weight_decay"]) for x in g] == [(old_decay, 1e-3, 0.05), (old_bias, 2e-3, 0.05)]
    mask = _ids(_mask_params(model))
    n = len(dcs_modules(model))  # 2 blocks + the JPM block
    assert n == 3 and len(mask) == (2 * n if mode == "token" else n)  # weight + bias each, or one [H, d] tensor
    g = param_groups(model, 1e-3, 0.05, 2.0, 0.0)
    assert _ids(g[0]["params"]) == old_decay - mask and _ids(g[1]["params"]) == old_bias - mask
    rest = g[2:]
    assert set().union(*(_ids(x["params"]) for x in rest)) == mask
    assert all(x["weight_decay"] == 0.0 for x in rest)
    if mode == "token":  # the mask's weight at the weights' lr, its bias at the biases' lr
        assert [(len(x["params"]), x["lr"]) for x in rest] == [(n, 1e-3), (n, 2e-3)]
    else:
        assert [(len(x["params"]), x["lr"]) for x in rest] == [(n, 1e-3)]


@pytest.mark.parametrize("wd, shrinks", [(None, True), (0.0, False)])
def test_adamw_step_shrinks_the_mask_bias_only_with_decay(wd, shrinks):
    """With no gradient on the mask logits, an AdamW step changes them by weight decay alone:
    ``b <- b (1 - lr_bias * wd)``; with the key at 0 they stay put while the other weights still decay."""
    model = _model("token")
    opt = torch.optim.AdamW(param_groups(model, 0.01, 0.5, 2.0, wd), lr=0.01)
    bias = dcs_modules(model)[0].mask_logits.bias
    other = model.base.blocks[0].mlp.fc1.weight if hasattr(model, "base") else next(
        p for n, p in model.named_parameters() if n.endswith("fc1.weight"))
    before, other_before = bias.detach().clone(), other.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    if shrinks:
        torch.testing.assert_close(bias.detach(), before * (1 - 0.02 * 0.5))
    else:
        torch.testing.assert_close(bias.detach(), before)
    torch.testing.assert_close(other.detach(), other_before * (1 - 0.01 * 0.5))


def test_mask_weight_decay_config_key():
    def cfg(*a):
        return resolve(build_parser().parse_args(["--config", TINY, *a]))

    assert cfg()["solver"]["mask_logits_weight_decay"] is None
    assert cfg("--set", "solver.mask_logits_weight_decay=0")["solver"]["mask_logits_weight_decay"] == 0
    for bad in ("-1", "lots"):
        with pytest.raises(ValueError, match="solver.mask_logits_weight_decay"):
            cfg("--set", f"solver.mask_logits_weight_decay={bad}")


# ------------------------------------------------------------------------------ mask variation
def test_mask_variation_known_values():
    theta = torch.full((2, 1, 3, 4), 2.0)  # every token keeps every channel the same way
    v = mask_variation(theta)
    assert float(v["var_tokens"]) == 0 and float(v["var_channels"]) == 0 and float(v["token_varying_bits"]) == 0
    theta[0, 0, 1, 2] = -2.0  # one token of image 0 drops channel 2
    v = mask_variation(theta)
    assert float(v["token_varying_bits"]) == pytest.approx(1 / 8)  # 1 of 2 images x 4 channels varies
    p_hi, p_lo = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(-2.0))
    col = torch.tensor([p_hi, p_lo, p_hi])
    assert float(v["var_tokens"]) == pytest.approx(float(col.var(unbiased=False)) / 8, rel=1e-5)
    row = torch.tensor([p_hi, p_hi, p_lo, p_hi])
    assert float(v["var_channels"]) == pytest.approx(float(row.var(unbiased=False)) / 6, rel=1e-5)
    ch = mask_variation(torch.tensor([[1.0, -1.0], [2.0, 2.0]]).view(1, 2, 1, 2))  # channel mode: one token
    assert float(ch["var_tokens"]) == 0 and float(ch["token_varying_bits"]) == 0 and float(ch["var_channels"]) > 0
    with pytest.raises(ValueError, match="theta"):
        mask_variation(torch.zeros(3, 4))


def test_eval_logging_records_mask_variation_per_block():
    model = _model("token")
    x = torch.randn(3, 3, 64, 32)
    rec = eval_keep_fractions(model, x)
    blocks = range(len(dcs_modules(model)))
    for i in blocks:  # initial mask: W = 0, b = 3, the same for every token and channel
        assert rec[f"eval_keep_fraction_b{i}"] == 1.0
        assert rec[f"mask_var_tokens_b{i}"] == 0 and rec[f"mask_var_channels_b{i}"] == 0
        assert rec[f"mask_token_varying_bits_b{i}"] == 0
    with torch.no_grad():
        for m in dcs_modules(model):
            m.mask_logits.weight.normal_(0, 1.0)
            m.mask_logits.bias.zero_()
    rec = eval_keep_fractions(model, x)
    for i in blocks:
        assert rec[f"mask_var_tokens_b{i}"] > 0 and rec[f"mask_var_channels_b{i}"] > 0
        assert 0 < rec[f"mask_token_varying_bits_b{i}"] <= 1
        assert 0 < rec[f"eval_keep_fraction_b{i}"] < 1
    assert rec["mask_token_varying_bits"] == pytest.approx(
        sum(rec[f"mask_token_varying_bits_b{i}"] for i in blocks) / len(blocks))
    # the hooks are removed and the model's mode restored
    assert all(not m._forward_hooks for m in dcs_modules(model)) and model.training
    chan = _model("channel")
    with torch.no_grad():
        for m in dcs_modules(chan):
            m.mask_logits.normal_(0, 2.0)
    rec = eval_keep_fractions(chan, x)
    assert rec["mask_var_tokens"] == 0 and rec["mask_token_varying_bits"] == 0 and rec["mask_var_channels"] > 0


# ------------------------------------------------------------------------------ against ground truth
@pytest.mark.parametrize("attn_impl", ["dcs", "sdpa"])
def test_recomputed_attention_is_the_modules(attn_impl):
    from ribkernels.engine.rib_logging import _block_attention

    torch.manual_seed(1)
    model = build_model("vit_small_conv_cpu", 5, img_size=(64, 32), attn_impl=attn_impl, neck_feat="after",
                        **({"dcs_kwargs": {"impl": "sdpa"}} if attn_impl == "dcs" else {}))
    attn = model.blocks[1].attn
    if attn_impl == "dcs":
        with torch.no_grad():
            attn.mask_logits.weight.normal_(0, 0.5)
            attn.mask_logits.bias.zero_()
    model.eval()
    x = torch.randn(2, 9, attn.qkv.in_features)
    with torch.no_grad():
        probs, mask = _block_attention(attn, x)
        B, N, C = x.shape
        v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
        y = (probs @ v).transpose(1, 2).reshape(B, N, C)
        y = attn.proj(getattr(attn, "norm", torch.nn.Identity())(y))
        torch.testing.assert_close(y, attn(x), rtol=1e-4, atol=1e-5)
    assert (mask is None) == (attn_impl == "sdpa")
    if mask is not None:
        assert 0 < float(mask.mean()) < 1  # some channels dropped: the mask is really applied above


def test_nuisance_token_stats():
    from ribkernels.engine.rib_logging import nuisance_token_stats

    torch.manual_seed(2)
    model = build_model("vit_small_conv_cpu", 5, img_size=(64, 32), attn_impl="dcs", neck_feat="after",
                        dcs_kwargs={"impl": "sdpa"})
    images = torch.randn(3, 3, 64, 32)
    occ = torch.zeros(3, 4, 2)
    occ[:, -1] = 1.0  # the bottom patch row is all occluder
    bg = torch.zeros(3, 4, 2)
    bg[:, 0] = 0.5
    rec = nuisance_token_stats(model, images, occ, bg)
    assert rec["share_occluder"] == pytest.approx(0.25) and rec["share_background"] == pytest.approx(0.125)
    for i in range(len(model.blocks)):
        total = rec[f"attn_occluder_b{i}"] + rec[f"attn_background_b{i}"] + rec[f"attn_person_b{i}"]
        assert total == pytest.approx(1.0, abs=1e-5) and 0 < rec[f"attn_occluder_b{i}"] < 1
        assert rec[f"keep_occluder_b{i}"] == 1.0 == rec[f"keep_person_b{i}"]  # initial mask keeps everything
    # a block-0 mask that drops every channel of the bottom row's tokens (patches 6, 7 = tokens 7, 8)
    attn0 = model.blocks[0].attn

    def theta(x):
        t = torch.full((x.shape[0], attn0.num_heads, x.shape[1], attn0.head_dim), 3.0)
        t[:, :, 7:] = -3.0
        return t

    attn0.compute_mask_logits = theta
    rec = nuisance_token_stats(model, images, occ, bg)
    assert rec["keep_occluder_b0"] == 0.0 and rec["keep_person_b0"] == 1.0 and rec["keep_background_b0"] == 1.0
    assert rec["keep_occluder_b1"] == 1.0
    with pytest.raises(ValueError, match="patch grid"):
        nuisance_token_stats(model, images, torch.zeros(3, 2, 2), torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="occluder, background"):
        nuisance_token_stats(model, images, occ[:2], bg[:2])
