"""Experiment (d): the IBB against an independent estimate of the IB objective along training.

After every epoch of a RIB-DCS run, on the whole training set (test transforms):

* the bound: a copy of the run's IBBLoss is refreshed on the current eval-mode features of the
  training set (the feature the run's IBB uses; k-means, calibrated β, Q), then ``IBB = mean_i [sum_b phi(X_i,b) log phi(X_i,b) - sum_a phi(F_i,a) log Q(y_i|a)]`` and the
  right-hand side of the inequality in docs/design.md §3 ``IB <= IBB + H(X̃) - H(Y)``, with H(X̃) the entropy of the
  mean soft input assignment and H(Y) the plug-in label entropy;
* the estimate on the bound's own variables: ``I(A; X̃) - I(A; Y)`` with A the IBB's soft feature
  clusters phi(F, a) and X̃ its soft input clusters phi(X, b), plug-in on the soft joint
  ``p(a, y) = mean_i phi(F_i, a) 1[y_i = y]`` (with Q unsmoothed, the IBB's prediction term is exactly
  H(Y | A) of this joint);
* an independent estimate: ``IB = I(F; X̃) - I(F; Y)``, plug-in (Miller-Madow bias-corrected) mutual
  informations on discretised variables — F by its own hard k-means into ``--bins`` cells (a
  different clustering, seed and size from the IBB's), X̃ the hard input cluster, Y the identity;
* permutation floors of every mutual information (Y shuffled, X̃ shuffled; ``--floor-reps`` draws:
  mean, sd, max): what the estimator returns for independent variables with the same cells and n;
* a held-out-probe estimate of I(F; Y): a linear softmax probe fitted on half of each identity's
  images, ``CE(label prior) - CE(probe)`` on the other half (nats; a variational lower bound, free of
  the plug-in's cell-count bias).

Reports per epoch all of these, whether the bound holds, and the Pearson/Spearman correlation of the
levels and of their epoch-to-epoch changes ("does the bound move with the estimate?").
``--eta 0`` is the control: the same run with the IBB computed and refreshed but not trained on.

    python -m experiments.ib_estimate [--epochs 8 --train-ids 150] [--eta 0 --out ib_estimate_eta0]

Writes experiments/results/<out>.json and <out>.png.
"""
import argparse
import copy
import math
import os
import time
from typing import Optional

import numpy as np
import torch

from .ablation import add_budget_flags, budget_overrides, budget_record
from .common import DEMO_CONFIG, command_line, write_json


def entropy_counts(counts: np.ndarray) -> float:
    """Plug-in entropy (nats) with the Miller-Madow correction (+ (m - 1) / 2n, m = non-empty cells)."""
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum() + (len(p) - 1) / (2 * n))


def mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """I(A; B) = H(A) + H(B) - H(A, B) from paired discrete samples (Miller-Madow entropies)."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = ia.astype(np.int64) * (ib.max() + 1) + ib
    return entropy_counts(np.bincount(ia)) + entropy_counts(np.bincount(ib)) - entropy_counts(np.bincount(joint))


def one_hot(labels: np.ndarray) -> np.ndarray:
    """[n] discrete labels -> [n, m] float64 one-hot over their m distinct values."""
    _, inv = np.unique(np.asarray(labels), return_inverse=True)
    out = np.zeros((len(inv), int(inv.max()) + 1 if len(inv) else 0))
    out[np.arange(len(inv)), inv] = 1.0
    return out


def soft_mutual_info(pa: np.ndarray, pb: np.ndarray) -> float:
    """Plug-in I(A; B) (nats) of the soft joint ``p(a, b) = mean_i pa[i, a] pb[i, b]``; ``pa`` [n, A] and
    ``pb`` [n, B] are per-sample distributions (rows sum to 1; a one-hot row is a hard value)."""
    pa, pb = np.asarray(pa, np.float64), np.asarray(pb, np.float64)
    if pa.ndim != 2 or pb.ndim != 2 or pa.shape[0] != pb.shape[0] or pa.shape[0] == 0:
        raise ValueError(f"pa, pb: expected [n, A] and [n, B] with the same n > 0, got {pa.shape} and {pb.shape}")
    joint = pa.T @ pb / pa.shape[0]
    ma, mb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * (np.log(joint[nz]) - np.log((ma @ mb)[nz]))).sum())


def permutation_floor(stat, a: np.ndarray, b: np.ndarray, reps: int = 20, seed: int = 0) -> dict:
    """``stat(a, b[perm])`` over ``reps`` random permutations of ``b``'s rows (independence with the
    same marginals, cells and n): ``{"mean", "sd", "max", "reps"}``."""
    if reps < 2:
        raise ValueError(f"reps: expected >= 2, got {reps}")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(a, b[rng.permutation(len(b))]) for _ in range(reps)])
    return {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)), "max": float(vals.max()), "reps": int(reps)}


def stratified_halves(labels: np.ndarray, seed: int = 0):
    """(fit, held-out) index arrays: each label's samples shuffled and split in half (a label with one
    sample goes to the fit half), so every held-out label was seen in fitting."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for y in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == y))
        k = max(1, len(idx) // 2)
        fit.append(idx[:k])
        held.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


PROBE_L2 = (1e-4, 1e-3, 1e-2, 1e-1)


def _fit_probe(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, iters: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(x.shape[1], k, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_mutual_info(feats: np.ndarray, labels: np.ndarray, *, seed: int = 0, l2: Optional[float] = None,
                      iters: int = 100) -> dict:
    """Held-out estimate of I(F; Y) (nats): a linear softmax probe on standardised ``feats`` [n, D] fitted
    (L-BFGS, L2 penalty ``l2``; None: the best of ``PROBE_L2`` on a split of the fit half alone) on half
    of each label's samples; on the other half, ``I = CE(fit-half label frequencies) - CE(probe)``. Near
    0 (or below) for independent variables, near H(Y) when Y is a function of F.
    Returns ``{"I_probe", "ce_probe", "ce_prior", "l2", "n_fit", "n_held"}``."""
    feats, labels = np.asarray(feats, np.float64), np.asarray(labels)
    if feats.ndim != 2 or len(feats) != len(labels):
        raise ValueError(f"feats, labels: expected [n, D] and [n], got {feats.shape} and {labels.shape}")
    _, y = np.unique(labels, return_inverse=True)
    k = int(y.max()) + 1
    fit, held = stratified_halves(y, seed)
    if len(held) == 0:
        raise ValueError("labels: need at least two samples of some label for a held-out half")
    mu, sd = feats[fit].mean(0), feats[fit].std(0) + 1e-8
    x = torch.as_tensor((feats - mu) / sd)
    yt = torch.as_tensor(y)
    if l2 is None:  # choose the penalty without looking at the held-out half
        inner_fit, inner_val = stratified_halves(y[fit], seed + 1)
        f_fit, f_val = fit[inner_fit], fit[inner_val]
        if len(f_val) == 0:
            l2 = PROBE_L2[len(PROBE_L2) // 2]
        else:
            def val_ce(lam):
                w, b = _fit_probe(x[f_fit], yt[f_fit], k, lam, iters, seed)
                return float(torch.nn.functional.cross_entropy(x[f_val] @ w + b, yt[f_val]))
            l2 = min(PROBE_L2, key=val_ce)
    w, b = _fit_probe(x[fit], yt[fit], k, float(l2), iters, seed)
    with torch.no_grad():
        ce_probe = float(torch.nn.functional.cross_entropy(x[held] @ w + b, yt[held]))
    prior = (np.bincount(y[fit], minlength=k) + 0.5) / (len(fit) + 0.5 * k)
    ce_prior = float(-np.log(prior[y[held]]).mean())
    return {"I_probe": ce_prior - ce_probe, "ce_probe": ce_probe, "ce_prior": ce_prior, "l2": float(l2),
            "n_fit": int(len(fit)), "n_held": int(len(held))}


def above_floor(value: float, floor: dict, z: float = 3.0) -> bool:
    """Whether ``value`` exceeds the permutation floor's mean by more than ``z`` of its sds."""
    return bool(value > floor["mean"] + z * floor["sd"])


@torch.no_grad()
def measure(tr, cfg, bins: int, seed: int, floor_reps: int = 20, probe: bool = True) -> dict:
    from ribkernels.engine import components
    from ribkernels.ibb import kmeans, soft_assign

    model, dev = tr.model, tr.device
    if tr.ibb is not None:
        ibb = copy.deepcopy(tr.ibb).eval()  # eval: the refresh's β (no batch re-fit) on these clean features
    else:  # a run without the IBB (e.g. the baseline): a fresh one with the config's settings, measured only
        ibb = components.build_ibb({**cfg, "ibb": {**cfg["ibb"], "enabled": True}}, tr.data, model).to(dev).eval()
    mcfg = {**cfg["model"], "ibb_after_neck": cfg["ibb"]["feature"] == "after"}
    if not bool(ibb.input_ready):
        ibb.set_input_clusters(components.input_cluster_images(tr.data, cfg, cfg["solver"]["seed"]).to(dev))
    feats, labels, ent, xcl, phix = [], [], [], [], []
    loader = tr.data.train_eval_loader(cfg, 0, 1)
    model.eval()
    for batch in loader:
        imgs, pids, cams, views = components.unpack(batch, dev)
        feats.append(components.global_features(model, imgs, cams, views, mcfg).float())
        labels.append(pids)
        ent.append(ibb.input_entropy(imgs))
        phi = soft_assign(ibb._downsample(imgs), ibb.input_centroids, beta=ibb._input_beta)
        phix.append(phi)
        xcl.append(phi.argmax(1))
    model.train()
    f, y, h_in = torch.cat(feats), torch.cat(labels), torch.cat(ent)
    ibb.refresh(f, y)
    term2 = float(ibb(f, y))
    term1 = float(h_in.mean())
    marg = torch.cat(phix).double().mean(0)
    h_xt = float(-(torch.xlogy(marg, marg)).sum())
    y_np, x_np = y.cpu().numpy(), torch.cat(xcl).cpu().numpy()
    h_y = entropy_counts(np.bincount(np.unique(y_np, return_inverse=True)[1]))
    fd = kmeans(torch.nn.functional.normalize(f, dim=1), bins, 10, seed + 7919).assignments.cpu().numpy()
    i_fx, i_fy = mutual_info(fd, x_np), mutual_info(fd, y_np)
    ibb_value = term1 + term2
    # the bound's own variables: the IBB's soft clusters A of F, its soft input clusters X̃, Y
    phi_f = soft_assign(f, ibb.centroids, beta=float(ibb.beta_used), normalize=ibb.normalize).double().cpu().numpy()
    phi_x = torch.cat(phix).double().cpu().numpy()
    y_oh = one_hot(y_np)
    i_ax, i_ay = soft_mutual_info(phi_f, phi_x), soft_mutual_info(phi_f, y_oh)
    floors = {"I_F_Y": permutation_floor(mutual_info, fd, y_np, floor_reps, seed),
              "I_F_X": permutation_floor(mutual_info, fd, x_np, floor_reps, seed + 1),
              "I_A_Y": permutation_floor(soft_mutual_info, phi_f, y_oh, floor_reps, seed + 2),
              "I_A_X": permutation_floor(soft_mutual_info, phi_f, phi_x, floor_reps, seed + 3)}
    row = {"ibb": ibb_value, "ibb_term1": term1, "ibb_term2": term2, "beta": ibb.last_refresh["beta"],
           "H_Xtilde": h_xt, "H_Y": h_y, "bound_rhs": ibb_value + h_xt - h_y,
           "I_F_X": i_fx, "I_F_Y": i_fy, "ib_estimate": i_fx - i_fy,
           "I_A_X": i_ax, "I_A_Y": i_ay, "ib_estimate_soft": i_ax - i_ay,
           "floors": floors, "above_floor": {k: above_floor(v, floors[k]) for k, v in
                                             (("I_F_Y", i_fy), ("I_F_X", i_fx), ("I_A_Y", i_ay), ("I_A_X", i_ax))}}
    if probe:
        pr = probe_mutual_info(f.double().cpu().numpy(), y_np, seed=seed)
        pr_floor = probe_mutual_info(f.double().cpu().numpy(), np.random.default_rng(seed).permutation(y_np), seed=seed)
        row.update(I_F_Y_probe=pr["I_probe"], I_F_Y_probe_shuffled=pr_floor["I_probe"], probe=pr)
    return row


def _corr(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _rank(a):
    return np.argsort(np.argsort(a)).astype(float)


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["epochs"]
    x = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    ax.plot(x, [r["bound_rhs"] for r in rows], marker="o", label="IBB + H(X̃) − H(Y) (bound)")
    ax.plot(x, [r["ib_estimate"] for r in rows], marker="s", label="I(F;X̃) − I(F;Y) (plug-in estimate)")
    if all("ib_estimate_soft" in r for r in rows):
        ax.plot(x, [r["ib_estimate_soft"] for r in rows], marker="D", label="I(A;X̃) − I(A;Y) (IBB's soft clusters)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats")
    ax.set_title("IB bound vs independent estimate")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(x, [r["ibb"] for r in rows], marker="o", label="IBB")
    ax.plot(x, [r["I_F_Y"] for r in rows], marker="^", label="I(F;Y)")
    ax.plot(x, [r["I_F_X"] for r in rows], marker="v", label="I(F;X̃)")
    for key, style in (("I_F_Y", ":"), ("I_F_X", "-.")):
        if all("floors" in r for r in rows):
            ax.plot(x, [r["floors"][key]["mean"] + 3 * r["floors"][key]["sd"] for r in rows], ls=style, color="grey",
                    label=f"{key} permutation floor (+3 sd)")
    if all("I_F_Y_probe" in r for r in rows):
        ax.plot(x, [r["I_F_Y_probe"] for r in rows], marker="*", label="I(F;Y) held-out probe")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bins", type=int, default=64, help="cells of the discretised feature (hard k-means)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-dir", default=os.path.join("runs", "ib_estimate"))
    p.add_argument("--config", default=DEMO_CONFIG, help="(a tiny config for a smoke test)")
    p.add_argument("--out", default=None, help="result file stem under experiments/results/ (default: ib_estimate, "
                   "ib_estimate_eta<η> with --eta)")
    p.add_argument("--eta", type=float, default=None,
                   help="the IBB's weight (default: the config's); 0 is the control: the IBB refreshed and measured, not trained on")
    p.add_argument("--floor-reps", type=int, default=20, help="permutations per permutation floor (>= 2)")
    p.add_argument("--no-probe", action="store_true", help="skip the held-out probe estimate of I(F;Y)")
    add_budget_flags(p)
    args = p.parse_args()
    if args.floor_reps < 2:
        p.error(f"--floor-reps: expected >= 2, got {args.floor_reps}")
    if args.eta is not None and args.eta < 0:
        p.error(f"--eta: expected >= 0, got {args.eta}")
    out_stem = args.out or ("ib_estimate" if args.eta is None else f"ib_estimate_eta{args.eta:g}")
    from ribkernels.engine import Trainer, build_parser, resolve

    argv = ["--config", args.config, "--set", f"output.dir={args.run_dir}", "--set", "output.progress=log",
            "--set", f"solver.seed={args.seed}"]
    for o in budget_overrides(args):
        argv += ["--set", o]
    if args.eta is not None:
        argv += ["--set", f"loss.eta={args.eta}"]
    cfg = resolve(build_parser().parse_args(argv))
    tr = Trainer(cfg)
    rows = []
    t0 = time.time()
    for epoch in range(cfg["solver"]["epochs"]):
        rec = tr.train_epoch(epoch)
        tr.metrics.add_epoch(rec)
        row = {"epoch": epoch + 1, "ibb_on": rec["ibb_on"],
               **measure(tr, cfg, args.bins, args.seed, args.floor_reps, not args.no_probe)}
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if not isinstance(v, dict)}, flush=True)
    final = tr.evaluate(cfg["solver"]["epochs"], final=True)
    d_est = np.diff([r["ib_estimate"] for r in rows])
    d_rhs = np.diff([r["bound_rhs"] for r in rows])
    d_soft = np.diff([r["ib_estimate_soft"] for r in rows])
    out = {"experiment": "IBB vs an independent IB estimate", "seed": args.seed, "bins": args.bins,
           "eta": cfg["loss"]["eta"], "floor_reps": args.floor_reps,
           "budget": budget_record(args),
           "command": command_line("experiments.ib_estimate"),
           "estimator": "plug-in mutual information with the Miller-Madow correction on F discretised by hard "
                        f"k-means into {args.bins} cells, X̃ = hard input cluster, Y = identity",
           "epochs": rows, "bound_holds_every_epoch": all(r["ib_estimate"] <= r["bound_rhs"] for r in rows),
           "pearson_levels": _corr([r["bound_rhs"] for r in rows], [r["ib_estimate"] for r in rows]),
           "spearman_levels": _corr(_rank([r["bound_rhs"] for r in rows]), _rank([r["ib_estimate"] for r in rows])),
           "pearson_changes": _corr(d_rhs, d_est),
           "pearson_levels_soft": _corr([r["bound_rhs"] for r in rows], [r["ib_estimate_soft"] for r in rows]),
           "pearson_changes_soft": _corr(d_rhs, d_soft),
           "epochs_above_floor": {k: [r["epoch"] for r in rows if r["above_floor"][k]]
                                  for k in ("I_F_Y", "I_F_X", "I_A_Y", "I_A_X")},
           "final": {k: final[k] for k in ("mAP", "rank1")} if final else None, "wall_s": time.time() - t0}
    path = write_json(out_stem + ".json", out)
    plot(out, os.path.join(os.path.dirname(path), out_stem + ".png"))
    print(path)


if __name__ == "__main__":
    main()
