"""DCSAttention under torch.compile(fullgraph=True), torch.export and the dynamo ONNX exporter (CPU).

The compile tests use the ``aot_eager`` backend: it runs dynamo (the whole-graph capture that
fullgraph=True checks) and AOT autograd (the ops' fake kernels and autograd formulas) without
inductor's C++ code generation, which would take minutes on a small CI machine.
"""
import pytest
import timm
import torch

import ribkernels as rk
from ribkernels.dcs.cpu_prepass import cpu_prepass_available


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test's models share timm's forward code objects: start each from an empty cache so
    dynamo's recompile limit is not reached across tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_vit(mask_mode="token", impl="sdpa"):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 32), num_classes=3,
                              depth=2, embed_dim=64, num_heads=4)
    rk.patch_vit(model, mask_mode=mask_mode, impl=impl)
    with torch.no_grad():  # θ near 0 so the masks are really random in training and mixed in eval
        for blk in model.blocks:
            if mask_mode == "token":
                blk.attn.mask_logits.bias.normal_(0, 1)
            else:
                blk.attn.mask_logits.normal_(0, 1)
    return model


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("mask_mode", ["token", "channel"])
def test_compile_fullgraph_train_and_eval(impl, mask_mode):
    model = tiny_vit(mask_mode, impl)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    model.eval()
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    model.train()
    torch.manual_seed(7)
    want = model(x)
    want.sum().backward()
    want_grad = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(7)  # the mask's seed is drawn from torch's generator inside the graph
    got = compiled(x)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight.grad, want_grad, rtol=1e-4, atol=1e-5)


def test_compiled_graph_holds_the_prepass_op():
    if not cpu_prepass_available():
        pytest.skip("ribkernels._C is not built with the DCS pre-pass")
    model = tiny_vit().train()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(model, fullgraph=True, backend=backend)(torch.randn(2, 3, 32, 32))
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("dcs_mask_apply" in t for t in targets) == len(model.blocks), targets


def test_torch_export_eval():
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    x2 = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(exported.module()(x2), model(x2), rtol=1e-5, atol=1e-5)


def test_onnx_dynamo_export_matches_eager_in_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "vit_dcs.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)


def test_nan_checks_are_skipped_under_tracing_but_not_eagerly():
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    theta = torch.randn(1, 2, 5, 8)
    theta[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="mask_logits contains NaN"):
        rk.dcs_attention(q, k, v, theta, impl="sdpa")
    fn = torch.compile(lambda *a: rk.dcs_attention(*a, impl="sdpa"), fullgraph=True, backend="aot_eager")
    assert fn(q, k, v, theta).shape == q.shape  # no data-dependent check in the graph
    assert rk.dcs_attention(q, k, v, theta, impl="sdpa", check_nan=False).shape == q.shape
