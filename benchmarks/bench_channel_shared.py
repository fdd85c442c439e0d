"""Cost of channel-shared DCS: timm's ``vit_small_patch16_224`` (batch 4, 224×224) patched with
``patch_vit(mask_mode="channel_shared")`` against the unpatched model, one CPU thread.

Rows: a training step (forward, cross-entropy, backward, SGD step) and an eval forward
(``torch.no_grad``). The variants run interleaved — each repetition times every variant once, in
a rotated order — so a busy machine slows them alike. Two clocks: the process's CPU time
(``time.process_time``: with one thread, the work done, robust to other processes sharing the cores;
the ratios are read from it) and wall time. The table gives per variant the median CPU and wall ms
and the median of the per-repetition ratios to the unpatched model (the paired estimate); the
ratio of the medians is printed beside it. ``--modes`` adds the per-token modes for comparison.

    python -m benchmarks.bench_channel_shared --reps 21 --out benchmarks/results/<folder>
    python -m benchmarks.bench_channel_shared --report benchmarks/results/<folder>/result.json  # re-render
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

from benchmarks.common import environment, markdown_table

VARIANTS = {  # name -> patch_vit kwargs (None: unpatched timm)
    "timm (unpatched)": None,
    "channel_shared, mask per image": dict(mask_mode="channel_shared", mask_per="image"),
    "channel_shared, mask per step": dict(mask_mode="channel_shared", mask_per="step"),
}
EXTRA = {"token": dict(mask_mode="token", impl="sdpa"), "channel": dict(mask_mode="channel", impl="sdpa")}


def build(kwargs, base_state, model_name: str, num_classes: int):
    import timm

    import ribkernels as rk

    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    model.load_state_dict(base_state)
    if kwargs is not None:
        rk.patch_vit(model, **kwargs)
    return model


def steps(model, x, y) -> Dict[str, Callable[[], None]]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train():
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def evaluate():
        model.eval()
        with torch.no_grad():
            model(x)

    return {"train step": train, "eval forward": evaluate}


COLS = ["pass", "variant", "cpu_ms", "wall_ms", "ratio_cpu", "ratio_cpu_of_medians", "ratio_wall"]


def render(result: Dict) -> str:
    """result.md from result.json: ratios with 4 decimals."""
    rows = [{k: (f"{v:.4f}" if k.startswith("ratio") else v) for k, v in r.items()} for r in result["rows"]]
    return (f"# Channel-shared DCS cost (CPU)\n\n`{result['command']}`\n\n{result['setup']}\n\n"
            f"{markdown_table(rows, COLS)}\n\ncpu_ms: median process CPU time (the work done; the ratios "
            "to read), wall_ms: median wall time (includes waiting for a core when other processes share "
            "the machine). ratio_*: median of the per-repetition ratios to the unpatched model, except "
            "ratio_cpu_of_medians.\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=21, help="interleaved repetitions (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", action="store_true", help="also time the token and channel modes")
    ap.add_argument("--out", default=None, help="folder for result.json and result.md")
    ap.add_argument("--report", default=None, metavar="JSON", help="only re-render result.md from a result.json")
    args = ap.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            text = render(json.load(f))
        with open(os.path.join(os.path.dirname(args.report), "result.md"), "w") as f:
            f.write(text)
        print(text)
        return 0
    torch.set_num_threads(args.threads)
    import timm

    torch.manual_seed(0)
    num_classes = 1000
    base_state = timm.create_model(args.model, pretrained=False, num_classes=num_classes).state_dict()
    size = 224
    x = torch.randn(args.batch, 3, size, size)
    y = torch.randint(0, num_classes, (args.batch,))
    variants = dict(VARIANTS)
    if args.modes:
        variants.update({f"{k} (per-token mask)": v for k, v in EXTRA.items()})
    fns = {name: steps(build(kw, copy.deepcopy(base_state), args.model, num_classes), x, y)
           for name, kw in variants.items()}
    names = list(variants)
    phases = ("train step", "eval forward")
    cpu: Dict[str, Dict[str, List[float]]] = {p: {n: [] for n in names} for p in phases}
    wall: Dict[str, Dict[str, List[float]]] = {p: {n: [] for n in names} for p in phases}
    for rep in range(args.warmup + args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for phase in phases:
            for n in order:
                c0, t0 = time.process_time(), time.perf_counter()
                fns[n][phase]()
                c1, t1 = time.process_time(), time.perf_counter()
                if rep >= args.warmup:
                    cpu[phase][n].append((c1 - c0) * 1e3)
                    wall[phase][n].append((t1 - t0) * 1e3)
        print(f"rep {rep + 1}/{args.warmup + args.reps}", file=sys.stderr, flush=True)
    base = names[0]
    rows = []
    med = statistics.median
    for phase in phases:
        c, w = cpu[phase], wall[phase]
        for n in names:
            rows.append({"pass": phase, "variant": n, "cpu_ms": med(c[n]), "wall_ms": med(w[n]),
                         "ratio_cpu": med([a / b for a, b in zip(c[n], c[base])]),
                         "ratio_cpu_of_medians": med(c[n]) / med(c[base]),
                         "ratio_wall": med([a / b for a, b in zip(w[n], w[base])])})
    times = {"cpu_ms": cpu, "wall_ms": wall}
    cmd = "python -m benchmarks.bench_channel_shared " + " ".join(argv if argv is not None else sys.argv[1:])
    env = environment("cpu")
    head = (f"{args.model}, batch {args.batch}, {size}x{size}, float32, {args.threads} CPU thread(s), "
            f"{args.reps} interleaved repetitions after {args.warmup} warm-up; torch {env['torch']}, {env['device']}")
    result = {"command": cmd, "setup": head, "environment": env, "rows": rows, "times_ms": times}
    text = render(result)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(args.out, "result.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
