"""``dcs_attention(impl="auto")``: the paths that must never time (the env switch, deterministic mode,
tracing, CUDA-graph capture), explicit backend names, and the real CUDA timing (GPU only)."""
import pytest
import torch

import ribkernels as rk
from backend_choice_common import cache_file, fresh, inputs, with_costs  # noqa: F401 (fresh: a fixture)
from ribkernels.dcs import attention, backend_choice


# --------------------------------------------------------------------------- paths that never time

def test_env_var_zero_uses_the_static_rule_and_no_cache(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv(backend_choice.ENV_VAR, "0")
    calls = with_costs(monkeypatch, fresh, {"sdpa": 9.0, "eager": 1.0})
    q, k, v, theta = inputs()
    rk.dcs_attention(q, k, v, theta, seed=0)
    assert calls == {"sdpa": 1, "eager": 0} and not cache_file(tmp_path).exists()
    rep = rk.available_backends(q, k, v, theta, report=True, measure=True)
    assert (rep.choice, rep.source) == ("sdpa", f"static rule ({backend_choice.ENV_VAR}=0)")
    monkeypatch.setenv(backend_choice.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="RIBKERNELS_DCS_AUTOTUNE_BACKEND must be 0 .* got 'maybe'"):
        rk.dcs_attention(q, k, v, theta, seed=0)


def test_deterministic_mode_never_times_but_uses_a_cached_winner(fresh, monkeypatch):
    calls = with_costs(monkeypatch, fresh, {"sdpa": 9.0, "eager": 1.0})
    q, k, v, theta = inputs()
    q2, k2, v2, theta2 = inputs((1, 4, 40, 8))
    rk.dcs_attention(q2, k2, v2, theta2, seed=0)  # measured: eager wins this key
    before = dict(calls)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        rk.dcs_attention(q, k, v, theta, seed=0)  # new key: static rule, no timing
        assert calls == {"sdpa": before["sdpa"] + 1, "eager": before["eager"]}
        rep = rk.available_backends(q, k, v, theta, report=True, measure=True)
        assert rep.source == "static rule (torch.use_deterministic_algorithms(True))"
        rk.dcs_attention(q2, k2, v2, theta2, seed=0)  # cached key: its winner
        assert calls == {"sdpa": before["sdpa"] + 1, "eager": before["eager"] + 1}
    finally:
        torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_uses_the_cached_winner_or_the_static_rule_and_never_times(fresh, monkeypatch, dynamic):
    torch._dynamo.reset()
    calls = with_costs(monkeypatch, fresh, {"sdpa": 9.0, "eager": 1.0})
    fn = torch.compile(lambda *a: rk.dcs_attention(*a, seed=3), fullgraph=True, backend="aot_eager",
                       dynamic=dynamic)
    q, k, v, theta = inputs()
    out = fn(q, k, v, theta)  # nothing cached: the static rule (sdpa), traced once
    assert calls == {"sdpa": 1, "eager": 0}
    torch.testing.assert_close(out, rk.dcs_attention(q, k, v, theta, seed=3, impl="sdpa"))
    q2, k2, v2, theta2 = inputs((1, 4, 40, 8))
    rk.dcs_attention(q2, k2, v2, theta2, seed=0)  # eager call measures this key: eager wins
    before = dict(calls)
    out2 = fn(q2, k2, v2, theta2)  # traced again (new bucket): the cached winner, no timing
    assert calls == {"sdpa": before["sdpa"], "eager": before["eager"] + 1}
    torch.testing.assert_close(out2, rk.dcs_attention(q2, k2, v2, theta2, seed=3, impl="eager"))
    torch._dynamo.reset()


def test_graph_capture_and_a_forced_sdpa_kernel_under_compile(fresh, monkeypatch):
    q, k, v, theta = inputs(grad=False)
    monkeypatch.setattr(backend_choice, "capturing", lambda t: True)
    assert backend_choice.why_no_timing(q) == "CUDA graph capture"
    calls = with_costs(monkeypatch, fresh, {"sdpa": 9.0, "eager": 1.0})
    rk.dcs_attention(q, k, v, theta, seed=0)
    assert calls == {"sdpa": 1, "eager": 0}  # static rule, no timing while "capturing"
    torch._dynamo.reset()
    fn = torch.compile(lambda *a: rk.dcs_attention(*a, seed=1, impl="sdpa:math"), fullgraph=True,
                       backend="aot_eager")
    torch.testing.assert_close(fn(q, k, v, theta), rk.dcs_attention(q, k, v, theta, seed=1, impl="sdpa"))
    torch._dynamo.reset()


def test_patched_vit_with_auto_compiles_fullgraph_and_exports_after_a_measured_step(fresh):
    timm = pytest.importorskip("timm")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 32), num_classes=3,
                              depth=2, embed_dim=64, num_heads=4)
    rk.patch_vit(model, mask_mode="token")  # impl="auto"
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()  # eager training step: measures the training key
    assert len(backend_choice._MEMORY) == 1
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(4)
    got = compiled(x)
    torch.manual_seed(4)
    torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)
    model.eval()
    exported = torch.export.export(model, (x,))  # eval key: nothing cached, the static rule, no timing
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)
    assert len(backend_choice._MEMORY) == 2  # the eager eval call above measured its key
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------- explicit names

def test_forced_sdpa_kernel_names_run_and_bad_names_list_them():
    q, k, v, theta = inputs(grad=False)
    torch.testing.assert_close(rk.dcs_attention(q, k, v, theta, seed=2, impl="sdpa:math"),
                               rk.dcs_attention(q, k, v, theta, seed=2, impl="sdpa"))
    with pytest.raises(ValueError, match=r"impl must be one of \[.*'sdpa:cudnn'.*got 'sdpa:fast'"):
        rk.dcs_attention(q, k, v, theta, impl="sdpa:fast")


def test_cuda_candidates_split_sdpa_per_kernel(monkeypatch):
    q, k, v, theta = inputs(grad=False)
    assert attention.auto_candidates(q, k, v, theta, None) == ["sdpa", "eager"]
    meta = torch.empty(1, 2, 13, 8, device="meta")  # a device that is not CPU: what CUDA would list
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: self.device.type == "meta"))
    monkeypatch.setitem(attention.BACKENDS, "triton", attention.Backend(lambda *a: [], None))
    names = attention.auto_candidates(meta, meta, meta, meta, None)
    assert names[0] == "triton" and names[-1] == "eager"
    assert set(names[1:-1]) <= set(attention.SDPA_KERNELS) and "sdpa:flash" in names and "sdpa" not in names


# ---------------------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
def test_cuda_times_triton_and_each_sdpa_kernel_and_returns_the_explicit_result(monkeypatch, tmp_path):
    """Real clock, real kernels: the choice is whatever is fastest here; the result must equal the explicit
    impl's for the same seed, and the CUDA and CPU RNG streams must be as if no timing had run."""
    monkeypatch.setenv(backend_choice.ENV_VAR, "1")
    monkeypatch.setenv("RIBKERNELS_CACHE", str(tmp_path / "cache"))
    backend_choice.reset()
    try:
        q, k, v, theta = (t.detach().cuda().half().requires_grad_() for t in inputs((2, 4, 211, 64)))
        torch.manual_seed(3)
        got = rk.dcs_attention(q, k, v, theta)
        states = torch.get_rng_state(), torch.cuda.get_rng_state()
        assert all(t.grad is None for t in (q, k, v, theta))
        rep = rk.available_backends(q, k, v, theta, report=True)
        assert rep.source == "measured" and rep.choice in rep.timings_ms
        assert set(rep.timings_ms) | set(rep.failed) == set(attention.auto_candidates(q, k, v, theta, None))
        assert "triton" in rep.timings_ms and "eager" in rep.timings_ms, rep
        torch.manual_seed(3)
        want = rk.dcs_attention(q, k, v, theta, impl=rep.choice)
        assert torch.equal(states[0], torch.get_rng_state()) and torch.equal(states[1], torch.cuda.get_rng_state())
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    finally:
        backend_choice.reset()
