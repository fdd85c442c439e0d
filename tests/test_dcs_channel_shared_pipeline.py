"""Channel-shared DCS in a model: TransReID trains with it and equals SDPA in eval, the folded ViT
exports to ONNX, a tiny training run evaluates and exports, the training config selects it."""
import copy
import os

import pytest
import torch

import ribkernels as rk
from channel_shared_common import mixed_theta, small_vit
from ribkernels.nn import DCSAttention
from ribkernels.nn.dcs_attention import fold_eval_masks


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
