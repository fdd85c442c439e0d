"""TransReID-repository checkpoints (key names mapped), timm ViT
weights by timm model name from a local file, train.py's own checkpoints as --pretrained, and clear
errors (path + expectation) for garbage, truncated and empty weight files."""
import argparse
import logging

import pytest
import torch

from ribkernels.engine import checkpoint as ckpt_io
from ribkernels.models import WeightsFileError, build_model, convert_transreid_repo_state_dict, load_pretrained

SMALL_VIT = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)


def _randomised(model):
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return model.eval()


def _to_transreid_repo(model, prefix=""):
    """Our state dict written with the names of TransReID's make_model.py / vit_pytorch.py: the ViT under
    ``base.``, with JPM the global branch ``b1 = Sequential(last block, norm)`` and the jigsaw branch
    ``b2``, ``bottleneck``/``classifier`` and ``bottleneck_i``/``classifier_i`` (1-based)."""
    sd = model.state_dict()
    depth = len(model.blocks)
    out = {}
    for k, v in sd.items():
        if model.use_jpm and k.startswith(f"blocks.{depth - 1}."):
            out["b1.0." + k[len(f"blocks.{depth - 1}."):]] = v
            out["base." + k] = torch.randn_like(v)  # TransReID's JPM model never runs base's last block
        elif model.use_jpm and k.startswith("norm."):
            out["b1.1." + k[len("norm."):]] = v
            out["base." + k] = torch.randn_like(v)
        elif k.startswith("jpm_block."):
            out["b2.0." + k[len("jpm_block."):]] = v
        elif k.startswith("jpm_norm."):
            out["b2.1." + k[len("jpm_norm."):]] = v
        elif k.startswith("neck.bn."):
            out["bottleneck." + k[len("neck.bn."):]] = v
        elif k.startswith("neck.classifier."):
            out["classifier." + k[len("neck.classifier."):]] = v
        elif k.startswith("local_necks."):
            i, rest = k[len("local_necks."):].split(".", 1)
            part, tail = rest.split(".", 1)
            out[f"{'bottleneck' if part == 'bn' else 'classifier'}_{int(i) + 1}.{tail}"] = v
        else:
            out["base." + k] = v
    out["base.fc.weight"] = torch.randn(1000, model.embed_dim)  # TransReID's unused ImageNet head
    out["base.fc.bias"] = torch.randn(1000)
    return {prefix + k: v for k, v in out.items()}


def _assert_same_weights(a, b):
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        torch.testing.assert_close(sb[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name, kwargs", [("vit_tiny_cpu", {}), ("vit_base", dict(SMALL_VIT, sie=True))])
def test_transreid_repo_round_trip(tmp_path, name, kwargs):
    src = _randomised(build_model(name, 7, camera_num=3, img_size=(64, 32), **kwargs))
    repo = _to_transreid_repo(src)
    assert any(k.startswith("b2.0.") for k in repo) == src.use_jpm
    converted, ignored = convert_transreid_repo_state_dict(repo)
    assert set(converted) == set(src.state_dict())
    assert "base.fc.weight" in ignored and any(k.startswith("base.norm.") for k in ignored) == src.use_jpm
    path = tmp_path / "transformer_120.pth"
    torch.save({"module." + k: v for k, v in repo.items()}, path)  # as saved from TransReID's DDP run
    dst = build_model(name, 7, camera_num=3, img_size=(64, 32), **kwargs).eval()
    missing, unexpected = load_pretrained(dst, path)
    assert missing == [] and unexpected == []
    _assert_same_weights(src, dst)
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(dst(x, cam_label=cams), src(x, cam_label=cams), rtol=0, atol=0)


def test_transreid_repo_other_dataset_skips_sized_heads(tmp_path, caplog):
    src = _randomised(build_model("vit_tiny_cpu", 7, camera_num=3, img_size=(64, 32)))
    path = tmp_path / "t.pth"
    torch.save(_to_transreid_repo(src), path)
    dst = build_model("vit_tiny_cpu", 4, camera_num=5, img_size=(64, 32))
    with caplog.at_level(logging.INFO):
        missing, _ = load_pretrained(dst, path)
    assert "TransReID-repository" in caplog.text and "neck.classifier.weight (7, 64) -> (4, 64)" in caplog.text
    assert "sie_embed (3, 1, 64) -> (5, 1, 64)" in caplog.text
    assert set(missing) == {"sie_embed", "neck.classifier.weight"} | {f"local_necks.{i}.classifier.weight" for i in range(4)}
    torch.testing.assert_close(dst.jpm_block.attn.qkv.weight, src.jpm_block.attn.qkv.weight, rtol=0, atol=0)


def _train_py_checkpoint(model, path, epoch=3):
    """What train.py's trainer saves (last.pth / final.pth): model, optimizer, RNG states (numpy arrays), config."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()(torch.randn(4, 3, 64, 32), cam_label=torch.tensor([0, 1, 2, 0]))["logits"][0].sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {"last_epoch": epoch},
             "rng": ckpt_io.rng_state(), "epoch": epoch, "iter": 0, "metrics": {"epochs": []},
             "config": {"model": {"name": "vit_tiny_cpu"}}, "world_size": 1}
    ckpt_io.save_atomic(state, str(path))
    return model.eval()


def test_own_checkpoint_as_pretrained(tmp_path, caplog):
    src = _train_py_checkpoint(_randomised(build_model("vit_tiny_cpu", 6, camera_num=3, img_size=(64, 32),
                                                       attn_impl="dcs")), tmp_path / "last.pth")
    dst = build_model("vit_tiny_cpu", 6, camera_num=3, img_size=(64, 32), attn_impl="dcs",
                      pretrained=str(tmp_path / "last.pth"))
    _assert_same_weights(src, dst)
    other = build_model("vit_tiny_cpu", 9, camera_num=3, img_size=(64, 32))  # another dataset, sdpa attention
    with caplog.at_level(logging.INFO):
        missing, unexpected = load_pretrained(other, tmp_path / "last.pth")
    assert "train.py checkpoint (model vit_tiny_cpu, epoch 3)" in caplog.text
    assert all("classifier" in k for k in missing) and unexpected and all("mask_logits" in k for k in unexpected)
    torch.testing.assert_close(other.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight, rtol=0, atol=0)
    wide = build_model("vit_small_cpu", 6, camera_num=3, img_size=(64, 32))
    with pytest.raises(WeightsFileError, match=r"last.pth' \(train.py checkpoint \(model vit_tiny_cpu.*has shape"):
        load_pretrained(wide, tmp_path / "last.pth")


def test_own_resnet_checkpoint_as_pretrained(tmp_path):
    src = _randomised(build_model("resnet18_se_cpu", 6))
    ckpt_io.save_atomic({"model": src.state_dict(), "optimizer": {}, "rng": ckpt_io.rng_state(), "config": {}},
                        str(tmp_path / "final.pth"))
    dst = build_model("resnet18_se_cpu", 6, pretrained=str(tmp_path / "final.pth"))
    _assert_same_weights(src, dst)


def test_garbage_truncated_empty_files_name_the_path(tmp_path):
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32))
    good = tmp_path / "good.pth"
    torch.save(_randomised(build_model("vit_tiny_cpu", 5, img_size=(64, 32))).state_dict(), good)
    blob = good.read_bytes()
    cases = {
        "garbage.pth": (b"\x00\x01garbage" * 50, "cannot be read as PyTorch file (not a pickle of tensors"),
        "truncated.pth": (blob[: len(blob) // 2], "cannot be read as PyTorch file (a damaged zip archive"),
        "empty.pth": (b"", "is empty"),
        "garbage.safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", "cannot be read as safetensors file"),
        "garbage.npz": (b"PK\x03\x04 not a zip", "cannot be read as Google ViT .npz"),
    }
    for name, (data, what) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsFileError) as e:
            load_pretrained(model, tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and what in str(e.value) and "Expected" in str(e.value), name
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsFileError, match=r"list.pth'.*expected a state dict \(name -> tensor\), got list"):
        load_pretrained(model, tmp_path / "list.pth")
    torch.save({"epoch": 3, "note": "x"}, tmp_path / "meta.pth")
    with pytest.raises(WeightsFileError, match=r"meta.pth'.*not tensors"):
        load_pretrained(model, tmp_path / "meta.pth")
    # weights_only: an arbitrary pickled object is refused, not executed
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "object.pth")
    with pytest.raises(WeightsFileError, match=r"object.pth.*argparse.Namespace, refused by weights-only loading"):
        load_pretrained(model, tmp_path / "object.pth")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsFileError, match=r"other.pth.*no tensor matched.*foo.weight"):
        load_pretrained(model, tmp_path / "other.pth")


def test_timm_weights_by_model_name(tmp_path):
    import timm

    vit = _randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    path = tmp_path / "deit_style.pth"
    torch.save({"model": vit.state_dict()}, path)  # DeiT's release format, read through timm's converter
    model = build_model("vit_base", 5, img_size=(64, 32), embed_dim=192, depth=12, num_heads=3)
    missing, unexpected = load_pretrained(model, f"timm:vit_tiny_patch16_224:{path}")
    assert unexpected == [] and all(k.startswith("neck.") for k in missing)
    for k, v in vit.state_dict().items():
        if not k.startswith(("head", "pos_embed")):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="timm model name 'vit_nonexistent'"):
        load_pretrained(model, f"timm:vit_nonexistent:{path}")
    with pytest.raises(ValueError, match="expected 'timm:<timm model name>:<local weights file>'"):
        load_pretrained(model, "timm:vit_tiny_patch16_224")
    with pytest.raises(WeightsFileError, match=r"deit_style.pth' does not hold timm 'vit_small_patch16_224' weights"):
        load_pretrained(model, f"timm:vit_small_patch16_224:{path}")


def test_timm_npz_by_model_name(tmp_path):
    import timm
    from test_models_pretrained import _save_npz  # the inverse of timm's Google .npz loader

    vit = _randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    path = tmp_path / "augreg.npz"
    _save_npz(vit, path)
    model = build_model("vit_base", 5, img_size=(64, 32), embed_dim=192, depth=12, num_heads=3)
    load_pretrained(model, f"timm:vit_tiny_patch16_224:{path}")
    for k in ("blocks.11.attn.qkv.weight", "blocks.0.mlp.fc1.bias", "patch_embed.proj.weight", "cls_token"):
        torch.testing.assert_close(model.state_dict()[k], vit.state_dict()[k], rtol=0, atol=0, msg=k)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(WeightsFileError, match=r"bad.npz': not a .npz checkpoint of timm 'vit_tiny_patch16_224'"):
        load_pretrained(model, f"timm:vit_tiny_patch16_224:{tmp_path / 'bad.npz'}")
