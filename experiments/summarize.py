"""Markdown tables of the committed results under experiments/results/ (what the README quotes).

    python -m experiments.summarize
"""
import math

from .common import load_json


def _f(x, nd=1):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def main() -> None:
    demo_b = load_json("demo_baseline.json")
    if demo_b:
        print(f"demo baseline: mAP {_f(demo_b['mAP'])} ± {_f(demo_b['mAP_se'])}, Rank-1 {_f(demo_b['rank1'])} ± "
              f"{_f(demo_b['rank1_se'])}, {demo_b['wall_s'] / 60:.1f} min — {demo_b['source']}\n")
    abl = load_json("ablation.json")
    if abl:
        print(f"ablation — `{abl['command']}` (budget {abl['budget']})\n")
        print("| variant | seeds | mAP % (mean ± std over seeds) | Rank-1 % | SE over queries (mAP / R1) | last-epoch IBB term 2 | eval keep |")
        print("|---|---|---|---|---|---|---|")
        for name, s in abl["summary"].items():
            runs = abl["runs"][name]
            t2 = [r.get("ibb_term2_last_epoch") for r in runs if r.get("ibb_term2_last_epoch") is not None]
            kf = [r.get("keep_fraction_eval") for r in runs if r.get("keep_fraction_eval") is not None]
            print(f"| {name} | {len(runs)} | {_f(s['mAP']['mean'])} ± {_f(s['mAP']['std'])} | {_f(s['rank1']['mean'])} ± "
                  f"{_f(s['rank1']['std'])} | {_f(s['mean_query_se']['mAP'])} / {_f(s['mean_query_se']['rank1'])} | "
                  f"{_f(sum(t2) / len(t2), 2) if t2 else '—'} | {_f(sum(kf) / len(kf), 3) if kf else '—'} |")
        print()
    sw = load_json("sweep.json")
    if sw:
        print(f"η × β sweep — `{sw['command']}` (budget {sw['budget']}, seed {sw['seed']})\n")
        print("| η | β | mAP % ± SE | Rank-1 % ± SE | β used (last refresh) | last-epoch IBB term 2 / log K | IBB/task grad ratio |")
        print("|---|---|---|---|---|---|---|")
        eta0_shown = False
        for c in sw["cells"]:
            if c["eta"] == 0:  # η = 0 trains no IBB: one run, shown once
                if eta0_shown:
                    continue
                eta0_shown = True
            if c.get("not_run"):
                print(f"| {c['eta']} | {c['beta']} | not run | | | | |")
                continue
            t2 = f"{_f(c.get('ibb_term2_last_epoch'), 2)} / {_f(c.get('log_k'), 2)}" if c.get("log_k") else "—"
            print(f"| {c['eta']} | {c['beta'] if c['eta'] > 0 else '— (no IBB)'} | {_f(c['mAP'])} ± {_f(c.get('mAP_se'))} | {_f(c['rank1'])} ± {_f(c.get('rank1_se'))} | "
                  f"{_f(c.get('beta_used_last'), 2)} | {t2} | {_f(c.get('grad_ratio_last'), 2)} |")
        print()
    occ = load_json("occlusion.json")
    if occ:
        print(f"occlusion — `{occ.get('command', '')}` ({occ['source']})\n")
        names = list(occ["curves"])
        print("| occluded | " + " | ".join(f"{n} mAP / R1" for n in names) + " |")
        print("|---|" + "---|" * len(names))
        for i, p in enumerate(occ["curves"][names[0]]):
            cells = [f"{_f(occ['curves'][n][i]['mAP']['mean'])} / {_f(occ['curves'][n][i]['rank1']['mean'])}" for n in names]
            print(f"| {100 * p['occlusion']:.0f}% | " + " | ".join(cells) + " |")
        print()
    for ib in (load_json("ib_estimate_demo.json"), load_json("ib_estimate.json")):
        if not ib:
            continue
        print(f"IBB vs IB estimate — `{ib['command']}` (budget {ib['budget']}); estimator: {ib['estimator']}\n")
        print("| epoch | IBB on | IBB | bound IBB + H(X̃) − H(Y) | estimate I(F;X̃) − I(F;Y) | I(F;X̃) | I(F;Y) | holds |")
        print("|---|---|---|---|---|---|---|---|")
        for r in ib["epochs"]:
            print(f"| {r['epoch']} | {r['ibb_on']} | {_f(r['ibb'], 3)} | {_f(r['bound_rhs'], 3)} | {_f(r['ib_estimate'], 3)} | "
                  f"{_f(r['I_F_X'], 3)} | {_f(r['I_F_Y'], 3)} | {r['ib_estimate'] <= r['bound_rhs']} |")
        print(f"\nbound holds every epoch: {ib['bound_holds_every_epoch']}; Pearson (levels) {_f(ib['pearson_levels'], 2)}, "
              f"Spearman (levels) {_f(ib['spearman_levels'], 2)}, Pearson (epoch-to-epoch changes) {_f(ib['pearson_changes'], 2)}; "
              f"final mAP {_f(100 * ib['final']['mAP'])} Rank-1 {_f(100 * ib['final']['rank1'])}\n")
    ms = load_json("mask_selection.json")
    if ms:
        print(f"mask selection — `{ms['command']}` (budget {ms['budget']}, seed {ms['seed']}, τ end {ms['tau_end']})\n")
        print("| initial mask logit | mAP % ± SE | Rank-1 % ± SE | kept in training, per block | kept at eval, per block |")
        print("|---|---|---|---|---|")
        for r in ms["rows"]:
            keeps = [" ".join(_f(v, 2) for v in r[k].values()) for k in ("train_keep", "eval_keep")]
            print(f"| {r['init_logit']} | {_f(r['mAP'])} ± {_f(r.get('mAP_se'))} | {_f(r['rank1'])} ± {_f(r.get('rank1_se'))} | "
                  f"{keeps[0]} | {keeps[1]} |")
        print()
    em = load_json("eval_mask_demo.json")
    if em:
        print(f"eval mask — `{em['command']}`\n")
        print("| eval mask | mAP % ± SE | Rank-1 % ± SE |\n|---|---|---|")
        for k, v in em["rows"].items():
            print(f"| {k} | {_f(v['mAP'])} ± {_f(v['mAP_se'])} | {_f(v['rank1'])} ± {_f(v['rank1_se'])} |")


if __name__ == "__main__":
    main()
