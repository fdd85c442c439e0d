"""Static sm_90 evidence without a GPU (docs/performance.md): compile every Triton kernel of DCS-Attention for
Hopper (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``), then read the cubin
with the ``cuobjdump`` inside the triton wheel: registers, spill bytes, shared memory, and the SASS
instruction mix (tensor-core MMA, integer ops, MUFU, local loads/stores).

    python -m benchmarks.sm90_static                       # the table (Markdown) on stdout
    python -m benchmarks.sm90_static --json rows.json      # also every row as a JSON list
    python -m benchmarks.sm90_static --candidates          # also the configs that were pruned
    python -m benchmarks.sm90_static --check               # exit 1 on a compile failure, or a spill or
                                                           # serialised wgmma (ptxas C7515) in a shipped config

Rows: every kernel × every shipped config (``ribkernels.dcs.triton.launch.SHIPPED``) × {fp16, bf16}
× D ∈ {32, 64, 128} (fp32 has no Triton path on GPU; ``--candidates`` adds its tf32x3 attempts and
the pruned 16-bit configs, ``shipped=False``), each backward kernel twice: with the mask
(``MASKED=True``, and the dθ epilogue of per-token θ) and with the mask compiled out (``MASKED=False``),
so the mask's share of the instructions is visible (``int_ratio``: integer ops
of the row ÷ those of its mask-off twin; integer ops are the per-thread integer ALU instructions in
``INT_OPS``, register moves issued as IMAD and the warp-uniform ``U*`` datapath left out). Counts
are static (each instruction once; a loop body counts once, as the per-tile cost does). The pre-pass
row gives ``instr_per_elem``: SASS instructions each thread issues per mask element it makes (static
count × threads ÷ elements per program; the pre-pass has no loop): with q⊙M and k⊙M (what the
forward uses) and the mask alone (``triton_dcs_mask``). The forward compiles once: it is plain
attention on the pre-pass's q⊙M, k⊙M, so its mask-off twin is the same kernel.
``loop_*`` columns read the attention loop's body only (the backward branch around the most MMAs):
``loop_mma`` MMA instructions, ``loop_mma_groups`` warpgroup-MMA commit groups (one per ``tl.dot``
unless ptxas serialises the wgmma or the dot runs as mma.sync, counted in ``loop_hmma``),
``loop_int_ops`` and ``loop_int_ratio`` (÷ the mask-off twin's loop), ``loop_atomics`` (RED/ATOM:
the fused backward's dQ adds), ``wgmma_serialized`` (ptxas's reason when it serialises the
warpgroup MMAs, its C7515 note; empty when it does not; ``--check`` fails on it in any shipped
row, the mask-off twins included: they are the benchmarks' baseline and have their own configs
where the masked kernel's do not suit them, ``launch.SHIPPED_NOMASK``; a twin compiled only to pair
with a masked config is ``shipped=False``). Kernels: ``fwd``; the split backward ``dkdv`` + ``dq``; the fused
backward ``fused`` (one pass per key block) + ``dq_finish``; ``prepass``, ``delta``, ``flat_noise``.
Signatures mimic the benchmark's launch: contiguous ``[B, H, N, D]`` tensors (last stride 1,
others multiples of 16), N and H not multiples of 16.
"""
import argparse
import collections
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEAD_DIMS = (32, 64, 128)
DTYPES = ("fp16", "bf16", "fp32")
TORCH_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
# Pruned-away configs compiled only with --candidates (to show why they are not shipped).
CANDIDATES = {"fwd": {"all": [(128, 64, 4, 3), (64, 128, 4, 2)]},
              "dkdv": {"all": [(64, 128, 8, 2), (64, 64, 4, 3)], 128: [(32, 64, 4, 2), (64, 128, 8, 2)]},
              "dq": {"all": [(128, 64, 8, 2), (64, 32, 4, 2)], 128: [(64, 32, 4, 2), (128, 64, 8, 2)]},
              "fused": {"all": [(32, 64, 4, 2), (64, 128, 8, 2), (64, 64, 8, 2), (32, 64, 4, 3)],
                        128: [(64, 64, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2)]}}

# The forward is plain attention on the pre-pass's q⊙M, k⊙M: with the mask and without it is one kernel.
FWD_VARIANT = "q⊙M, k⊙M (= nomask)"
INT_OPS = {"IMAD", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "ISETP", "LEA", "IMNMX", "VIMNMX",
           "IABS", "SEL", "PRMT", "BMSK", "SGXT", "POPC", "FLO", "BREV", "IDP", "IMUL", "IMADSP", "I2I"}
MMA_OPS = {"HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "BGMMA", "DMMA"}


def _bin(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _signature(kernel, dt: str, consts: Dict[str, object], ptr_types: Dict[str, str]):
    """Signature / constexprs / attrs of a launch on contiguous [B, H, N, D] tensors of dtype dt."""
    sig, attrs, constexprs = {}, {}, dict(consts)
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("qk_scale", "scale", "inv_tau"):
            sig[name] = "fp32"
        elif re.fullmatch(r"s[a-z]{1,3}d", name):  # innermost stride: 1 → specialised to a constant
            sig[name] = "constexpr"
            constexprs[name] = 1
        elif re.fullmatch(r"s[a-z]{1,3}[bhn]", name):  # outer strides: multiples of 16
            sig[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("H", "N", "BH", "NB_MAX", "numel"):
            sig[name] = "i32"
        else:
            raise ValueError(f"sm90_static: no signature rule for argument {name!r} of {kernel.__name__}")
    return sig, constexprs, attrs


def _variants():
    """(kernel name, variant, config, dtype, D, shipped, consts, ptr types, elems per program, compiled
    without --candidates: shipped, or the mask-off twin of a shipped masked config for the ratios)."""
    import torch

    from ribkernels.dcs.triton import launch
    from ribkernels.dcs.triton.noise import MODE_EVAL, MODE_PHILOX

    jobs = []
    for dt in DTYPES:
        tdt = getattr(torch, TORCH_DTYPE[dt])
        for D in HEAD_DIMS:
            common_ptr = {n: f"*{dt}" for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV", "TH", "NZ")}
            common_ptr.update(MSK=f"*{dt}", LSE="*fp32", DELTA="*fp32", DMK="*fp32", DQACC="*fp32", RNG="*i64")
            for kname in ("fwd", "dkdv", "dq", "fused"):
                if dt == "fp32":  # no Triton path on GPU (routed to sdpa): the evidence for that
                    shipped, shipped_nomask, extra = [], [], launch.FP32_TF32X3_TRIED.get(kname, {}).get(D, [])
                else:
                    shipped = launch.shipped_configs(kname, D, tdt)
                    shipped_nomask = launch.shipped_configs(kname, D, tdt, masked=False)
                    extra = [c for c in CANDIDATES[kname].get(D, CANDIDATES[kname]["all"])
                             if c not in shipped and c not in shipped_nomask]
                own_twin = [c for c in shipped_nomask if c not in shipped]  # the mask-off twin's own config
                for cfg, is_shipped in ([(c, True) for c in shipped] + [(c, False) for c in own_twin]
                                        + [(c, False) for c in extra]):
                    bm, bn, w, s = cfg
                    base = dict(HEAD_DIM=D, DOT_PREC=launch.dot_precision(tdt), BLOCK_M=bm, BLOCK_N=bn)
                    if kname == "fwd":  # plain attention: the pre-pass made q⊙M, k⊙M; the mask-off twin is itself
                        variants = [(FWD_VARIANT, {})]
                    else:
                        bwd = dict(MODE=MODE_PHILOX, TAU_ONE=True)
                        variants = [("mask+dθ token", dict(MASKED=True, DTH_MODE=1, **bwd)),
                                    ("nomask", dict(MASKED=False, DTH_MODE=0, **bwd))]
                        if (D == 64 or kname == "fused") and dt != "fp32":  # the fused loop: every D
                            variants += [("mask", dict(MASKED=True, DTH_MODE=0, **bwd)),
                                         ("mask+dθ channel", dict(MASKED=True, DTH_MODE=2, **bwd))]
                    for vname, v in variants:
                        ptrs = dict(common_ptr)
                        ptrs["DTH"] = f"*{dt}" if v.get("DTH_MODE") == 1 else "*fp32"
                        # shipped: the launcher can pick it for this variant (the twin has its own list);
                        # a twin row of a masked shipped config is kept for the ratio columns
                        ship = cfg in shipped_nomask if vname == "nomask" and dt != "fp32" else is_shipped
                        keep = ship or (vname == "nomask" and cfg in shipped)
                        jobs.append((kname, vname, cfg, dt, D, ship, {**base, **v}, ptrs, None, keep))
            for vname, mode, mask_qk in (("philox + q⊙M, k⊙M", MODE_PHILOX, True),
                                         ("eval (θ > 0) + q⊙M, k⊙M", MODE_EVAL, True),
                                         ("philox, mask only", MODE_PHILOX, False)):
                rows = launch.prepass_rows(D)
                jobs.append(("prepass", vname, (rows, 0, 4, 1), dt, D, True,
                             dict(HEAD_DIM=D, MODE=mode, BLOCK_R=rows, FAST=True, MASK_QK=mask_qk),
                             {n: f"*{dt}" for n in ("TH", "NZ", "MASK", "Q", "K", "QM", "KM")} | {"RNG": "*i64"},
                             rows * D, True))
            if dt != "fp32":
                rows = launch.finish_rows(D)
                bwd = dict(HEAD_DIM=D, MODE=MODE_PHILOX, TAU_ONE=True, BLOCK_M=rows)
                for vname, v in (("mask+dθ token", dict(MASKED=True, DTH_MODE=1)),
                                 ("mask+dθ channel", dict(MASKED=True, DTH_MODE=2)),
                                 ("mask", dict(MASKED=True, DTH_MODE=0)), ("nomask", dict(MASKED=False, DTH_MODE=0))):
                    ptrs = {n: f"*{dt}" for n in ("Q", "MSK", "DQ", "TH", "NZ")}
                    ptrs.update(DQACC="*fp32", RNG="*i64", DTH=f"*{dt}" if v["DTH_MODE"] == 1 else "*fp32")
                    jobs.append(("dq_finish", vname, (rows, 0, 4, 1), dt, D, True, {**bwd, **v}, ptrs, None, True))
                jobs.append(("delta", "", (launch.DELTA_ROWS, 0, 4, 1), dt, D, True,
                             dict(HEAD_DIM=D, BLOCK=launch.DELTA_ROWS),
                             {"O": f"*{dt}", "DO": f"*{dt}", "DELTA": "*fp32"}, None, True))
    jobs.append(("flat_noise", "logistic", (1024, 0, 4, 1), "fp32", 0, True, dict(WHAT=1, BLOCK=1024),
                 {"OUT": "*fp32", "RNG": "*i64"}, 1024, True))
    return jobs


def _kernel_fn(kname: str):
    from ribkernels.dcs.triton import backward, backward_fused, debug, forward, prepass

    return {"fwd": forward.dcs_fwd_kernel, "dkdv": backward.dcs_bwd_dkdv_kernel,
            "dq": backward.dcs_bwd_dq_kernel, "fused": backward_fused.dcs_bwd_fused_kernel,
            "dq_finish": backward_fused.dcs_bwd_dq_finish_kernel, "prepass": prepass.dcs_mask_prepass_kernel,
            "delta": backward.dcs_bwd_delta_kernel, "flat_noise": debug.flat_noise_kernel}[kname]


def _is_move(op: str, mods: str, operands: List[str]) -> bool:
    """IMAD.MOV / IMAD.U32 Rd, RZ, RZ, x are register moves issued as IMAD, not integer work."""
    return op == "IMAD" and (mods.startswith(".MOV") or operands[1:3] == ["RZ", "RZ"])


def _main_loop(instrs) -> Optional[tuple]:
    """(start, end) addresses of the loop body with the most MMA instructions (ties: the longest),
    from the backward branches ``BRA target`` with target < own address; None without a loop holding
    an MMA (the pre-pass, delta, finishing kernels)."""
    best = None
    for addr, op, _mods, operands in instrs:
        if op != "BRA" or not operands or not operands[0].startswith("0x"):
            continue
        target = int(operands[0], 16)
        if target >= addr:
            continue
        mma = sum(1 for a, o, _, _ in instrs if target <= a <= addr and o in MMA_OPS)
        score = (mma, addr - target)
        if mma and (best is None or score > best[0]):
            best = (score, (target, addr))
    return None if best is None else best[1]


def _sass_counts(cubin: bytes) -> Dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([_bin("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    instrs = []  # (address, opcode, modifiers, operands)
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_]*)\s*([^;]*);",
                     line)
        if m:
            instrs.append((int(m.group(1), 16), m.group(2), m.group(3), [o.strip() for o in m.group(4).split(",")]))
    ops = collections.Counter(op for _, op, _, _ in instrs)
    moves = sum(1 for _, op, mods, opnds in instrs if _is_move(op, mods, opnds))
    total = sum(n for op, n in ops.items() if op not in ("NOP",))
    out = {"sass_total": total,
           "mma": sum(n for op, n in ops.items() if op in MMA_OPS),
           "int_ops": sum(n for op, n in ops.items() if op in INT_OPS) - moves,
           "mufu": ops.get("MUFU", 0),
           "local_ld": ops.get("LDL", 0), "local_st": ops.get("STL", 0)}
    loop = _main_loop(instrs)
    if loop is not None:  # the attention loop body: what each tile costs
        body = [i for i in instrs if loop[0] <= i[0] <= loop[1]]
        out["loop_mma"] = sum(1 for _, op, _, _ in body if op in MMA_OPS)
        # A warpgroup MMA group: HGMMA ... HGMMA(gsb0) after a WARPGROUP.ARRIVE, one per tl.dot, unless
        # ptxas serialises the wgmma (then one per HGMMA) or the dot runs as mma.sync (HMMA, no groups:
        # a dot with fewer than 64 rows per warpgroup).
        out["loop_mma_groups"] = sum(1 for _, op, _, opnds in body if op == "HGMMA" and "gsb0" in opnds)
        out["loop_hmma"] = sum(1 for _, op, _, _ in body if op == "HMMA")
        out["loop_int_ops"] = sum(1 for _, op, mods, opnds in body
                                  if op in INT_OPS and not _is_move(op, mods, opnds))
        out["loop_atomics"] = sum(1 for _, op, _, _ in body if op in ("RED", "REDG", "ATOM", "ATOMG"))
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res)
    if m:
        out.update(registers=int(m.group(1)), stack=int(m.group(2)), static_shared=int(m.group(3)),
                   local_bytes=int(m.group(4)))
    return out


def _wgmma_serialized(ptx: str) -> str:
    """Why ptxas serialises the kernel's warpgroup MMAs (its "C7515 Potential Performance Loss" note,
    which triton's own ptxas run discards), or "" when it does not. Reruns ptxas -v on the PTX with
    the flags triton uses."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([_bin("ptxas"), "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a", src, "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True)
    m = re.search(r"wgmma\.mma_async instructions are serialized due to (.*?) in the function",
                  log.stdout + log.stderr)
    return m.group(1) if m else ""


def _compile_one(job) -> Dict:
    kname, vname, cfg, dt, D, shipped, consts, ptrs, elems, _ = job
    bm, bn, w, s = cfg
    row = {"kernel": kname, "variant": vname,
           "config": f"{bm}x{bn} w{w} s{s}" if kname in ("fwd", "dkdv", "dq", "fused") else f"{bm} w{w}",
           "dtype": dt, "D": D, "shipped": shipped}
    t0 = time.time()
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn = _kernel_fn(kname)
        sig, constexprs, attrs = _signature(fn, dt, consts, ptrs)
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=w, num_stages=s))
        row.update(_sass_counts(ck.asm["cubin"]))
        if row.get("loop_mma"):
            row["wgmma_serialized"] = _wgmma_serialized(ck.asm["ptx"])
        row["shared_bytes"] = max(int(getattr(ck.metadata, "shared", 0)), row.get("static_shared", 0))
        # These kernels call no functions: their stack frame is register spills (ptxas -v's
        # "bytes stack frame"); local memory beyond it would be spills too.
        row["spill_bytes"] = row.get("stack", 0) + row.get("local_bytes", 0)
        if elems:
            row["instr_per_elem"] = row["sass_total"] * w * 32 / elems
        row["error"] = ""
    except Exception as exc:  # a compile failure is a row, and fails --check
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    row["compile_s"] = round(time.time() - t0, 2)
    return row


def _int_ratios(rows: List[Dict]) -> None:
    base = {(r["kernel"], r["config"], r["dtype"], r["D"]): r for r in rows if r["variant"] == "nomask"}
    for r in rows:
        b = base.get((r["kernel"], r["config"], r["dtype"], r["D"]))
        if b is None or r is b:
            continue
        for key in ("int_ops", "loop_int_ops"):
            if b.get(key) and r.get(key) is not None:
                r[key.replace("_ops", "_ratio")] = r[key] / b[key]


COLUMNS = ["kernel", "variant", "config", "dtype", "D", "shipped", "registers", "spill_bytes", "shared_bytes",
           "mma", "loop_mma", "loop_mma_groups", "loop_hmma", "int_ops", "int_ratio", "loop_int_ops", "loop_int_ratio",
           "loop_atomics", "wgmma_serialized", "mufu", "local_ld", "local_st", "sass_total", "instr_per_elem",
           "error"]


def run(jobs_n: int = 2, candidates: bool = False) -> List[Dict]:
    jobs = [j for j in _variants() if candidates or j[9]]
    rows = []
    with cf.ProcessPoolExecutor(max_workers=jobs_n) as ex:
        for i, row in enumerate(ex.map(_compile_one, jobs)):
            rows.append(row)
            if (i + 1) % 20 == 0 or i + 1 == len(jobs):
                print(f"[sm90_static] {i + 1}/{len(jobs)} compiled", file=sys.stderr, flush=True)
    _int_ratios(rows)
    return rows


def problems(rows: List[Dict]) -> List[str]:
    """What fails CI: a compile failure, a spill in a shipped config, or serialised warpgroup MMAs in a
    shipped config (the mask-off twins included: they are the benchmarks' baseline)."""
    out = []
    for r in rows:
        where = f"{r['kernel']} [{r['variant']}] {r['config']} {r['dtype']} D={r['D']}"
        if r.get("error"):
            out.append(f"compile failure: {where}: {r['error']}")
        elif r["shipped"] and r.get("spill_bytes", 0) > 0:
            out.append(f"spill in a shipped config: {where}: {r['spill_bytes']} B")
        elif r["shipped"] and r.get("wgmma_serialized"):
            out.append(f"ptxas serialises the warpgroup MMAs of a shipped config: {where}: "
                       f"{r['wgmma_serialized']}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows as a JSON list here")
    ap.add_argument("--md", help="write the Markdown table here")
    ap.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    ap.add_argument("--candidates", action="store_true", help="also compile the pruned (unshipped) configs")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 on a compile failure, or a spill or serialised wgmma in a shipped config")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real (no GPU is needed to compile)
    from benchmarks.common import markdown_table

    t0 = time.time()
    rows = run(args.jobs, args.candidates)
    table = markdown_table(rows, COLUMNS)
    print(table)
    bad = problems(rows)
    print(f"\nsm90_static: {len(rows)} kernels compiled for sm_90 in {time.time() - t0:.0f} s "
          f"({args.jobs} processes); {len(bad)} problem(s)")
    for p in bad:
        print("  " + p)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
