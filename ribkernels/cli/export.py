"""Export a checkpoint's evaluation model (images in, retrieval features out) and check it.

    python -m ribkernels export runs/<run>/final.pth --format onnx --out model.onnx
    python -m ribkernels export runs/<run>/final.pth --format torch-export --out model.pt2

The exported graph is the model in eval mode: DCS-Attention with its eval mask ``1[θ > 0]`` (no
noise) on the ``sdpa`` backend (mask modes "channel"/"channel_shared": the mask folded into the qkv
weights, a plain attention graph), and, for a model trained with camera embeddings (SIE), the mean
camera embedding folded in (the graph takes images only, like ``extract`` without camera ids).
Input ``images`` [B, 3, H, W] (normalised as in training; B is dynamic), output ``features``
[B, D]. The file is then loaded back (onnxruntime / ``torch.export.load``) and its output compared
with PyTorch's on random sample inputs at two batch sizes; the max abs error is printed and the
command fails when it exceeds ``--atol``.

The ONNX file is self-contained (weights embedded) while the weights are under 2 GB; beyond that
ONNX requires them in a sidecar file, ``<out>.data``, which the command names and which must stay
beside the ``.onnx`` file. The preprocessing (input size, RGB, 1/255, mean, std, resize
interpolation) is written into the file: the ONNX metadata key ``preprocessing`` (JSON), the
``.pt2`` archive's ``extra/preprocessing.json``.
"""
import copy
import os

from .. import _env
from . import CommandError
from ._common import add_checkpoint_argument, check_checkpoint, check_output_file, positive_int

NAME = "export"
HELP = "export the evaluation model to ONNX or torch.export (.pt2), checked against PyTorch"

FORMATS = {"onnx": (".onnx",), "torch-export": (".pt2",)}


def add_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="onnx | torch-export")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file (.onnx or .pt2; must not exist "
                                                                      "unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="batch of the sample input")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest max-abs difference from PyTorch accepted (features are O(1))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample inputs")



def export_model(loaded):
    """The eval model as exported: camera ids folded in, DCS on sdpa (per-channel eval masks folded
    into the weights: plain attention), eval mode, CPU."""
    from ..engine.model import dcs_modules
    from ..inference import without_camera_ids
    from ..nn.dcs_attention import fold_eval_masks

    model = without_camera_ids(loaded.model).cpu().eval()
    if model is loaded.model and any(m.mask_mode != "token" for m in dcs_modules(model)):
        model = copy.deepcopy(model)  # the masks are folded on a copy: loaded.model keeps its θ
    for m in dcs_modules(model):
        m.impl = "sdpa"
    fold_eval_masks(model)
    return model


def _check_onnx_runtime() -> None:
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise CommandError(f"--format onnx needs {', '.join(missing)} (pip install {' '.join(missing)})")


def _dynamic_batch():
    import torch

    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


def _why(exc: BaseException) -> str:
    """The exception's type and first line, and the last ribkernels source line the exporter named."""
    import re

    text = "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None)
    first = text.strip().splitlines()[0] if text.strip() else ""
    where = re.findall(r'File "([^"]*ribkernels[/\\][^"]*)", line (\d+)', text)
    at = f" (raised at {os.path.relpath(where[-1][0])}:{where[-1][1]})" if where else ""
    return f"{type(exc).__name__}: {first[:300]}{at}"


ONNX_SINGLE_FILE_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB, less room for the graph


def _weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _export_and_run(model, samples, args, meta):
    """Export ``model`` to ``args.out`` with the metadata ``meta`` (str values); the reloaded file's
    outputs on ``samples`` and the sidecar weights file (None: one self-contained file)."""
    import torch

    if args.format == "onnx":
        import onnxruntime

        with torch.no_grad():
            program = torch.onnx.export(model, (samples[0],), input_names=["images"], output_names=["features"],
                                        dynamic_shapes=_dynamic_batch(), dynamo=True, verbose=False)
        program.model.metadata_props.update(meta)
        sidecar = args.out + ".data" if _weight_bytes(model) >= ONNX_SINGLE_FILE_LIMIT else None
        program.save(args.out, external_data=sidecar is not None)
        session = onnxruntime.InferenceSession(args.out, providers=["CPUExecutionProvider"])
        return [session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] for x in samples], sidecar
    with torch.no_grad():
        program = torch.export.export(model, (samples[0],), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, args.out, extra_files={"preprocessing.json": meta["preprocessing"]})
    reloaded = torch.export.load(args.out).module()
    with torch.no_grad():
        return [reloaded(x).numpy() for x in samples], None


def run(args) -> int:
    import numpy as np
    import torch

    from ..inference import load_model

    check_checkpoint(args.checkpoint)
    check_output_file(args.out, "--out", FORMATS[args.format], overwrite=args.overwrite)
    if not args.atol > 0:
        raise CommandError(f"--atol must be > 0, got {args.atol}")
    if args.format == "onnx":
        _check_onnx_runtime()

    loaded = load_model(args.checkpoint, "cpu", dcs_impl="sdpa")
    model = export_model(loaded)
    h, w = (int(v) for v in loaded.config["model"]["img_size"])
    g = torch.Generator().manual_seed(args.seed)
    samples = [torch.randn(b, 3, h, w, generator=g) for b in (args.batch_size, args.batch_size + 1)]
    with torch.no_grad():
        refs = [model(x).numpy() for x in samples]
    if not all(np.isfinite(r).all() for r in refs):
        raise CommandError(f"CHECKPOINT {args.checkpoint}: the model gives non-finite features (NaN or inf) on "
                           "random sample inputs; nothing was exported")

    import json

    from ..engine.model_file import preprocessing

    meta = {"preprocessing": json.dumps(preprocessing(loaded.config)), "model": str(loaded.config["model"]["name"]),
            "output": "features [B, D] (retrieval; compare with Euclidean distance of L2-normalised features)"}
    try:
        outs, sidecar = _export_and_run(model, samples, args, meta)
    except Exception as exc:  # the model holds an op the exporter cannot trace: say which, no traceback
        if _env.is_set("RIBKERNELS_DEBUG"):
            raise
        print(f"export FAILED ({args.format}, {loaded.config['model']['name']}, attn "
              f"{loaded.config['model']['attn_impl']}): {_why(exc)} (RIBKERNELS_DEBUG=1 shows the traceback)")
        return 1

    errors = [float(np.abs(o - r).max()) for o, r in zip(outs, refs)]
    shapes = [tuple(o.shape) for o in outs]
    print(f"{args.out}: {args.format}, {loaded.config['model']['name']} (attn {loaded.config['model']['attn_impl']}), "
          f"input images [B, 3, {h}, {w}] -> features {shapes}; max abs error vs PyTorch "
          f"{max(errors):.3g} (batches {[len(x) for x in samples]}: {', '.join(f'{e:.3g}' for e in errors)})")
    if args.format == "onnx":
        print(f"{args.out}: " + (f"weights in {sidecar} ({_weight_bytes(model) / 2**30:.1f} GB, over ONNX's 2 GB "
                                 f"single-file limit): keep {os.path.basename(sidecar)} beside it" if sidecar
                                 else "one self-contained file (weights embedded)")
              + "; preprocessing in its metadata ('preprocessing'): " + meta["preprocessing"])
    if any(s != r.shape for s, r in zip(shapes, refs)) or not max(errors) <= args.atol:
        print(f"export check FAILED: max abs error {max(errors):.3g} > --atol {args.atol} (or shapes differ)")
        return 1
    return 0
