"""Static sm_90 evidence without a GPU (docs/performance.md): compile every Triton kernel of DCS-Attention for
Hopper (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``), then read the cubin
with the ``cuobjdump`` inside the triton wheel: registers, spill bytes, shared memory, and the SASS
instruction mix (tensor-core MMA, integer ops, MUFU, local loads/stores).

    python -m benchmarks.sm90_static                       # the table (Markdown) on stdout
    python -m benchmarks.sm90_static --json rows.json      # also every row as a JSON list
    python -m benchmarks.sm90_static --candidates          # also the configs that were pruned
    python -m benchmarks.sm90_static --check               # exit 1 on a compile failure, a spill in a
                                                           # shipped config's attention loop (or > 128 B
                                                           # anywhere), serialised wgmma (ptxas C7515)
                                                           # or a dominated shipped config
    python -m benchmarks.sm90_static --kernels bwd --dims 64 --dtypes bf16   # a subset
    python -m benchmarks.sm90_static --tree /tmp/before    # another checkout's kernels (before/after)
    python -m benchmarks.sm90_static --model rows.json     # the performance model's inputs from a table

Rows: every kernel × every shipped config (``ribkernels.dcs.triton.launch.SHIPPED``) × {fp16, bf16}
× D ∈ {32, 64, 128} (fp32 has no Triton path on GPU; ``--candidates`` adds its tf32x3 attempts and
the pruned 16-bit configs, ``shipped=False``); the backward (``bwd``: one program per head) four
times: with the mask and the dθ epilogue of a per-token θ (``mask+dθ token``) or of a broadcast θ
(``mask+dθ channel``), with the mask alone, and with the mask compiled out (``nomask``: the
benchmarks' baseline, whose own configs are ``launch.SHIPPED_NOMASK`` where they differ; a twin
compiled only to pair with a masked config is ``shipped=False``). ``int_ratio``: integer ops of the
row ÷ its mask-off twin's (integer ops: the per-thread integer ALU instructions in ``INT_OPS``,
register moves issued as IMAD and the warp-uniform ``U*`` datapath left out). Counts are static
(each instruction once; a loop body counts once, as the per-tile cost does). The pre-pass row gives
``instr_per_elem``: SASS instructions each thread issues per mask element it makes (static count ×
threads ÷ elements per program; the pre-pass has no loop). The forward compiles once: it is plain
attention on the pre-pass's q⊙M, k⊙M, so its mask-off twin is the same kernel.

``loop_*`` columns read the attention loop's body only: the innermost loop holding MMAs (the
backward's query loop, not the key loop around it): ``loop_sass`` instructions (= SASS per tile and
warp), ``loop_fp32``, ``loop_mufu``, ``loop_mma`` MMA instructions, ``loop_mma_groups``
warpgroup-MMA commit groups (one per ``tl.dot`` unless ptxas serialises the wgmma or the dot runs as
mma.sync, counted in ``loop_hmma``), ``loop_int_ops`` and ``loop_int_ratio``, ``loop_atomics``
(RED/ATOM), ``loop_local`` (LDL/STL: spills inside the loop), ``spill_sites`` (every LDL/STL of the
kernel by place: attention loop, the loop around it, another loop, no loop), ``wgmma_serialized``
(ptxas's C7515 reason, empty when it does not serialise). Per-work columns (attention-loop kernels):
``ctas_per_sm`` (registers, shared memory, warps), ``warp_instr_64x64`` and ``mufu_64x64`` (the
loop's warp-instructions and MUFU per 64×64 score tile), ``mma_per_kfma`` (MMA warp-instructions per
1024 FMAs the GEMMs need), and ``dominated``: the config that beats this one (``dominated()``).
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
CANDIDATES = {"fwd": {"all": [(128, 64, 4, 3), (64, 128, 4, 2)],
                      128: [(128, 64, 8, 2), (128, 64, 4, 3), (64, 128, 4, 2)]},
              "bwd": {"all": [(64, 64, 8, 2), (32, 64, 4, 2), (64, 128, 8, 2), (64, 64, 4, 3)],
                      128: [(64, 64, 4, 2), (32, 64, 8, 2), (32, 64, 4, 2)]}}
MAX_SHARED = 232448  # bytes of shared memory per SM usable by CTAs on sm_90 (227 KB + 1 KB per CTA reserved)
# The forward is plain attention on the pre-pass's k⊙M and either its q⊙M (then with the mask and
# without it is one kernel) or raw q with the mask multiplied in before the key loop (MASK_Q).
FWD_VARIANT = "q⊙M, k⊙M (= nomask)"
FWD_MASK_Q_VARIANT = "q·mask in prologue, k⊙M"
INT_OPS = {"IMAD", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "ISETP", "LEA", "IMNMX", "VIMNMX",
           "IABS", "SEL", "PRMT", "BMSK", "SGXT", "POPC", "FLO", "BREV", "IDP", "IMUL", "IMADSP", "I2I"}
FP32_OPS = {"FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "FCHK", "FSWZADD"}
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
        elif name in ("H", "N", "numel", "BH", "NB_MAX"):  # BH, NB_MAX: an older tree's (--tree)
            sig[name] = "i32"
        else:
            raise ValueError(f"sm90_static: no signature rule for argument {name!r} of {kernel.__name__}")
    return sig, constexprs, attrs


def _variants():
    """(kernel name, variant, config, dtype, D, shipped, consts, ptr types, elems per program, compiled
    without --candidates: shipped, or the mask-off twin of a shipped masked config for the ratios)."""
    import torch

    from ribkernels.dcs.triton import launch
    from ribkernels.dcs.triton.noise import MODE_PHILOX

    jobs = []
    for dt in DTYPES:
        tdt = getattr(torch, TORCH_DTYPE[dt])
        for D in HEAD_DIMS:
            common_ptr = {n: f"*{dt}" for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV", "TH", "NZ")}
            common_ptr.update(MSK=f"*{dt}", QMASK=f"*{dt}", LSE="*fp32", DELTA="*fp32", DQACC="*fp32", DMK="*fp32", RNG="*i64",
                              DS="*fp32" if dt == "fp32" else "*fp16")
            for kname in launch.KERNELS:  # ("fwd", "bwd"); another tree's (--tree) may have others
                if dt == "fp32":  # no Triton path on GPU (routed to sdpa): the evidence for that
                    shipped, shipped_nomask, extra = [], [], launch.FP32_TF32X3_TRIED.get(kname, {}).get(D, [])
                else:
                    shipped = launch.shipped_configs(kname, D, tdt)
                    shipped_nomask = launch.shipped_configs(kname, D, tdt, masked=False)
                    cands = CANDIDATES.get(kname, {})
                    extra = [c for c in cands.get(D, cands.get("all", []))
                             if c not in shipped and c not in shipped_nomask]
                own_twin = [c for c in shipped_nomask if c not in shipped]  # the mask-off twin's own config
                for cfg, is_shipped in ([(c, True) for c in shipped] + [(c, False) for c in own_twin]
                                        + [(c, False) for c in extra]):
                    bm, bn, w, s = cfg
                    base = dict(HEAD_DIM=D, DOT_PREC=launch.dot_precision(tdt), BLOCK_M=bm, BLOCK_N=bn)
                    if kname == "fwd":  # plain attention on q⊙M, k⊙M (its own mask-off twin), or raw q·mask
                        variants = [(FWD_VARIANT, dict(MASK_Q=False)), (FWD_MASK_Q_VARIANT, dict(MASK_Q=True))]
                    else:
                        bwd = dict(MODE=MODE_PHILOX, TAU_ONE=True, DS_SAVED=False)
                        variants = [("mask+dθ token", dict(MASKED=True, DTH_MODE=1, **bwd)),
                                    ("nomask", dict(MASKED=False, DTH_MODE=0, **bwd))]
                        if dt != "fp32":
                            variants += [("mask", dict(MASKED=True, DTH_MODE=0, **bwd)),
                                         ("mask+dθ channel", dict(MASKED=True, DTH_MODE=2, **bwd)),
                                         # the public op's path when θ needs a gradient: dθ's factor saved
                                         ("mask+dθ token, dsoft saved", dict(MASKED=True, DTH_MODE=1,
                                                                            **{**bwd, "DS_SAVED": True}))]
                    for vname, v in variants:
                        ptrs = dict(common_ptr)
                        ptrs["DTH"] = f"*{dt}" if v.get("DTH_MODE") == 1 else "*fp32"
                        # shipped: the launcher can pick it for this variant (the twin has its own list);
                        # a twin row of a masked shipped config is kept for the ratio columns
                        ship = cfg in shipped_nomask if vname == "nomask" and dt != "fp32" else is_shipped
                        keep = ship or (vname == "nomask" and cfg in shipped)
                        jobs.append((kname, vname, cfg, dt, D, ship, {**base, **v}, ptrs, None, keep))
            for vname, mode, mask_q, mask_k, save_ds in PREPASS_VARIANTS:
                rows = launch.prepass_rows(D)
                jobs.append(("prepass", vname, (rows, 0, 4, 1), dt, D, True,
                             dict(HEAD_DIM=D, MODE=mode, BLOCK_R=rows, FAST=True, MASK_Q=mask_q, MASK_K=mask_k,
                                  MASK_QK=mask_q or mask_k, SAVE_DS=save_ds, TAU_ONE=True),  # MASK_QK: --tree
                             {n: f"*{dt}" for n in ("TH", "NZ", "MASK", "Q", "K", "QM", "KM")}
                             | {"RNG": "*i64", "DS": "*fp32" if dt == "fp32" else "*fp16"}, rows * D, True))
            if dt != "fp32" and hasattr(launch, "finish_rows"):  # an older tree's dq finishing kernel (--tree)
                rows = launch.finish_rows(D)
                for vname, v in (("mask+dθ token", dict(MASKED=True, DTH_MODE=1)), ("mask", dict(MASKED=True, DTH_MODE=0))):
                    ptrs = {n: f"*{dt}" for n in ("Q", "MSK", "DQ", "TH", "NZ")}
                    ptrs.update(DQACC="*fp32", RNG="*i64", DTH=f"*{dt}" if v["DTH_MODE"] == 1 else "*fp32")
                    jobs.append(("dq_finish", vname, (rows, 0, 4, 1), dt, D, True,
                                 dict(HEAD_DIM=D, MODE=MODE_PHILOX, TAU_ONE=True, BLOCK_M=rows, **v), ptrs, None, True))
    jobs.append(("flat_noise", "logistic", (1024, 0, 4, 1), "fp32", 0, True, dict(WHAT=1, BLOCK=1024),
                 {"OUT": "*fp32", "RNG": "*i64"}, 1024, True))
    return jobs


# (variant, MODE (0: eval, 2: Philox; noise.MODE_*), MASK_Q, MASK_K, SAVE_DS) of the pre-pass rows. "k⊙M" rows: the pre-pass of the
# forward that multiplies the mask into raw q itself (``FWD_MASK_Q_VARIANT``).
PREPASS_VARIANTS = (("philox + q⊙M, k⊙M", 2, True, True, False), ("philox + q⊙M, k⊙M + dsoft", 2, True, True, True),
                    ("philox + k⊙M", 2, False, True, False), ("philox + k⊙M + dsoft", 2, False, True, True),
                    ("eval (θ > 0) + q⊙M, k⊙M", 0, True, True, False), ("eval (θ > 0) + k⊙M", 0, False, True, False),
                    ("philox, mask only", 2, False, False, False))


def _kernel_fn(kname: str):
    from ribkernels.dcs.triton import debug, launch, prepass

    if kname == "dq_finish":  # an older tree's (--tree)
        from ribkernels.dcs.triton import backward_fused

        return backward_fused.dcs_bwd_dq_finish_kernel
    return {**launch.KERNELS, "prepass": prepass.dcs_mask_prepass_kernel, "flat_noise": debug.flat_noise_kernel}[kname]


def _is_move(op: str, mods: str, operands: List[str]) -> bool:
    """IMAD.MOV / IMAD.U32 Rd, RZ, RZ, x are register moves issued as IMAD, not integer work."""
    return op == "IMAD" and (mods.startswith(".MOV") or operands[1:3] == ["RZ", "RZ"])


def _main_loop(instrs) -> Optional[tuple]:
    """(start, end) addresses of the attention loop's body: of the innermost loops holding an MMA
    (loops from the backward branches ``BRA target``, target < own address, that contain no other
    loop holding an MMA: the backward's key loop holds its query loop), the one with the most MMA
    instructions (ties: the longest); None without a loop holding an MMA (pre-pass, noise kernels)."""
    loops = []
    for addr, op, _mods, operands in instrs:
        if op != "BRA" or not operands or not operands[0].startswith("0x"):
            continue
        target = int(operands[0], 16)
        if target >= addr:
            continue
        mma = sum(1 for a, o, _, _ in instrs if target <= a <= addr and o in MMA_OPS)
        if mma:
            loops.append((mma, target, addr))
    inner = [lp for lp in loops if not any(o is not lp and lp[1] <= o[1] and o[2] <= lp[2] for o in loops)]
    if not inner:
        return None
    _, start, end = max(inner, key=lambda lp: (lp[0], lp[2] - lp[1]))
    return start, end


def _loops(instrs) -> List[tuple]:
    """(start, end) of every loop (backward branch ``BRA target``, target < own address)."""
    out = []
    for addr, op, _mods, operands in instrs:
        if op == "BRA" and operands and operands[0].startswith("0x") and int(operands[0], 16) < addr:
            out.append((int(operands[0], 16), addr))
    return out


def _spill_sites(instrs, main) -> str:
    """Where the local loads/stores (spills) sit: ``LDL``/``STL`` counts in the attention loop
    (``main``), in a loop around it (once per outer iteration), in another loop, or outside loops."""
    loops = _loops(instrs)
    sites = collections.Counter()
    for addr, op, _, _ in instrs:
        if op not in ("LDL", "STL"):
            continue
        if main is not None and main[0] <= addr <= main[1]:
            where = "attention loop"
        elif main is not None and any(a <= addr <= b and a <= main[0] and main[1] <= b for a, b in loops):
            where = "outer loop"
        elif any(a <= addr <= b for a, b in loops):
            where = "other loop"
        else:
            where = "no loop"
        sites[f"{op} {where}"] += 1
    return "; ".join(f"{n} {k}" for k, n in sorted(sites.items()))


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
    out["spill_sites"] = _spill_sites(instrs, loop)
    if loop is not None:  # the loops around the attention loop (less it), and the other loops
        loops = _loops(instrs)
        around = [lp for lp in loops if lp[0] <= loop[0] and loop[1] <= lp[1] and lp != loop]
        if around:
            a, b = min(around, key=lambda lp: lp[1] - lp[0])
            out["outer_loop_sass"] = sum(1 for i in instrs if a <= i[0] <= b and i[1] != "NOP") - sum(
                1 for i in instrs if loop[0] <= i[0] <= loop[1] and i[1] != "NOP")
        out["other_loops_sass"] = sum(sum(1 for i in instrs if a <= i[0] <= b and i[1] != "NOP")
                                      for a, b in loops if not (a <= loop[0] and loop[1] <= b)
                                      and not (loop[0] <= a and b <= loop[1]))  # the attention loop body: what each tile costs
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
        out["loop_sass"] = sum(1 for _, op, _, _ in body if op != "NOP")
        out["loop_mufu"] = sum(1 for _, op, _, _ in body if op == "MUFU")
        out["loop_fp32"] = sum(1 for _, op, _, _ in body if op in FP32_OPS)
        # spills inside the hot loop (local loads/stores between its first and last instruction)
        out["loop_local"] = sum(1 for _, op, _, _ in body if op in ("LDL", "STL"))
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
           "config": f"{bm}x{bn} w{w} s{s}" if kname not in ("prepass", "flat_noise", "dq_finish") else f"{bm} w{w}",
           "dtype": dt, "D": D, "shipped": shipped}
    t0 = time.time()
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn = _kernel_fn(kname)
        consts = {k: v for k, v in consts.items() if k in fn.arg_names}  # an older tree's kernel (--tree)
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


def _per_tile(rows: List[Dict]) -> None:
    """Occupancy and per-work costs of every attention-loop row, the inputs of ``dominated``:
    ``ctas_per_sm`` (registers, shared memory, 64 warps and 32 CTAs per SM), ``warps_per_sm``;
    ``warp_instr_64x64``: the loop's warp-instructions per 64×64 score tile (``loop_sass`` × warps
    × 4096 ÷ (BLOCK_M·BLOCK_N)); ``mufu_64x64`` likewise for MUFU; ``mma_per_kfma``: MMA warp-instructions per
    1024 of the FMAs its GEMMs must do (2 GEMMs of BLOCK_M·BLOCK_N·D in the forward, 5 in the backward)."""
    for r in rows:
        if r.get("error") or not r.get("loop_mma") or r["kernel"] in ("prepass", "flat_noise", "dq_finish"):
            continue
        bm, bn = (int(x) for x in r["config"].split()[0].split("x"))
        w = int(r["config"].split()[1][1:])
        regs = -(-max(r["registers"], 1) // 8) * 8
        by_regs = 65536 // (regs * 32 * w)
        by_smem = MAX_SHARED // (r["shared_bytes"] + 1024)
        r["ctas_per_sm"] = min(by_regs, by_smem, 64 // w, 32)
        r["warps_per_sm"] = r["ctas_per_sm"] * w
        tile = 4096 / (bm * bn)
        r["warp_instr_64x64"] = round(r["loop_sass"] * w * tile)
        r["mufu_64x64"] = round(r["loop_mufu"] * w * tile)
        gemms = {"fwd": 2, "dkdv": 4, "dq": 3}.get(r["kernel"], 5)  # dkdv, dq: an older tree's split passes
        r["mma_per_kfma"] = round(r["loop_mma"] * w * 1024 / (gemms * bm * bn * r["D"]), 3)


def _stages(r: Dict) -> int:
    return int(r["config"].split()[2][1:])


def _blocks(r: Dict) -> tuple:
    return tuple(int(x) for x in r["config"].split()[0].split("x"))


DOMINANCE_KEYS = ("warp_instr_64x64", "mufu_64x64", "mma_per_kfma")


def dominated(rows: List[Dict]) -> None:
    """``dominated`` = the config (same kernel, variant, dtype, D) that beats this row: no lower
    occupancy (warps per SM), no coarser tile (BLOCK_M and BLOCK_N no larger: a coarser tile pays
    more padding at awkward N, which the per-tile counts do not see), no shallower software
    pipeline (num_stages no smaller: static counts do not price the latency a deeper one hides), no more of any of
    ``DOMINANCE_KEYS`` and fewer of at least one, itself compiled without spill or serialised wgmma.
    Empty when none does (rows without an attention loop: never)."""
    groups = collections.defaultdict(list)
    for r in rows:
        if "warps_per_sm" in r:
            groups[(r["kernel"], r["variant"], r["dtype"], r["D"])].append(r)
    for group in groups.values():
        for r in group:
            r["dominated"] = ""
            for o in group:
                if o is r or o["warps_per_sm"] < r["warps_per_sm"] or o.get("spill_bytes", 0) > 0 \
                        or o.get("wgmma_serialized") or any(x > y for x, y in zip(_blocks(o), _blocks(r))) \
                        or _stages(o) < _stages(r):
                    continue
                if all(o[k] <= r[k] for k in DOMINANCE_KEYS) and any(o[k] < r[k] for k in DOMINANCE_KEYS):
                    r["dominated"] = f"by {o['config']}"
                    break


COLUMNS = ["kernel", "variant", "config", "dtype", "D", "shipped", "registers", "spill_bytes", "shared_bytes",
           "mma", "loop_mma", "loop_mma_groups", "loop_hmma", "int_ops", "int_ratio", "loop_int_ops", "loop_int_ratio",
           "loop_atomics", "wgmma_serialized", "loop_sass", "loop_fp32", "loop_mufu", "loop_local", "spill_sites", "outer_loop_sass",
           "other_loops_sass", "ctas_per_sm",
           "warp_instr_64x64", "mufu_64x64", "mma_per_kfma", "dominated", "mufu", "local_ld", "local_st", "sass_total", "instr_per_elem",
           "error"]


def run(jobs_n: int = 2, candidates: bool = False, kernels=None, dims=None, dtypes=None) -> List[Dict]:
    jobs = [j for j in _variants() if (candidates or j[9]) and (not kernels or j[0] in kernels)
            and (not dims or j[4] in dims) and (not dtypes or j[3] in dtypes)]
    rows = []
    with cf.ProcessPoolExecutor(max_workers=jobs_n) as ex:
        for i, row in enumerate(ex.map(_compile_one, jobs)):
            rows.append(row)
            if (i + 1) % 20 == 0 or i + 1 == len(jobs):
                print(f"[sm90_static] {i + 1}/{len(jobs)} compiled", file=sys.stderr, flush=True)
    _int_ratios(rows)
    _per_tile(rows)
    dominated(rows)
    return rows


def spill_outside_loop_ok(r: Dict) -> bool:
    """A spill the check tolerates: only in a kernel with an attention loop, none of its local
    loads/stores inside that loop or any loop but the one around it (where they run once per outer
    iteration: the backward's key loop, a few reloads per key block against its whole query loop),
    at most ``MAX_OUTER_SPILL_BYTES`` of stack."""
    sites = r.get("spill_sites", "")
    return (bool(r.get("loop_mma")) and r.get("loop_local", 0) == 0 and "other loop" not in sites
            and "attention loop" not in sites and r.get("spill_bytes", 0) <= MAX_OUTER_SPILL_BYTES)


MAX_OUTER_SPILL_BYTES = 128


def problems(rows: List[Dict]) -> List[str]:
    """What fails CI: a compile failure, a spill in a shipped config, or serialised warpgroup MMAs in a
    shipped config (the mask-off twins included: they are the benchmarks' baseline)."""
    out = []
    for r in rows:
        where = f"{r['kernel']} [{r['variant']}] {r['config']} {r['dtype']} D={r['D']}"
        if r.get("error"):
            out.append(f"compile failure: {where}: {r['error']}")
        elif r["shipped"] and r.get("spill_bytes", 0) > 0 and not spill_outside_loop_ok(r):
            out.append(f"spill in a shipped config: {where}: {r['spill_bytes']} B ({r.get('spill_sites')})")
        elif r["shipped"] and r.get("wgmma_serialized"):
            out.append(f"ptxas serialises the warpgroup MMAs of a shipped config: {where}: "
                       f"{r['wgmma_serialized']}")
        elif r["shipped"] and r.get("dominated"):
            out.append(f"a shipped config is dominated: {where}: {r['dominated']}")
    return out


# ---------------------------------------------------------------------------- the performance model
# Predicted, never measured: docs/performance.md states the assumptions. Shape B=64, H=12, N=211,
# D=64, bf16, per-token θ, fwd+bwd. Ceilings: H200 as measured by the workplace (copy 4.3 TB/s, bf16
# matmul 788 TFLOP/s, 132 SMs × 4 schedulers at 1.98 GHz).
MODEL_SHAPE = (64, 12, 211, 64)
COPY_TBPS, MMA_TFLOPS, ISSUE_WARP_INSTR_PER_S = 4.3, 788.0, 132 * 4 * 1.98e9
# DRAM bytes per element (first touch; bf16 = 2 B, float32 4 B), per launch, (low, high).
BYTES = {
    "v2": {"pre-pass (θ, q, k → mask, q⊙M, k⊙M)": (12, 12), "forward (q⊙M, k⊙M, v → out)": (8, 8),
               "delta (out, dout)": (4, 4), "dQ accumulator memset": (4, 4),
               "fused backward (q, k, v, mask, dout → dk, dv, dM_k; dQ atomics' L2 misses)": (16, 24),
               "dq finishing (dQ acc, q, mask, θ, dM_k → dq, dθ)": (16, 16)},
    "v3": {"pre-pass (θ, q, k → mask, q⊙M, k⊙M, dθ's factor dsoft)": (14, 14),
           "forward (q⊙M, k⊙M, v → out)": (8, 8),
           "backward (q, k, v, mask, out, dout, dsoft → dq, dk, dv, dθ; dQ scratch write-back)": (22, 26)},
    "v4": {"pre-pass (θ, k → mask, k⊙M, dθ's factor dsoft)": (10, 10),
           "forward (q, mask, k⊙M, v → out)": (10, 10),
           "backward (q, k, v, mask, out, dout, dsoft → dq, dk, dv, dθ; dQ scratch write-back)": (22, 26)},
    "sdpa": {"forward (q, k, v → out)": (8, 8),
             "backward (q, k, v, out, dout → dq, dk, dv; fp32 dQ accumulator)": (24, 28)},
}
# Extras beyond plain SDPA's attention core, µs (low, high): the standalone memory-bound passes at
# COPY_TBPS, and what the static counts say about work SDPA does not do.
T_CORE_US = (150.0, 300.0)  # plain SDPA fwd+bwd at this shape: 100–200 TFLOP/s achieved


LAUNCHES = {"v2": 6, "v3": 3, "v4": 3, "sdpa": 4}  # sdpa (FA2): fwd; bwd: delta + dQ clear, main, dq cast
LAUNCH_US = 2.5  # per extra launch on the critical path


def _sass(rows, kernel, variant, D=64):
    """The first shipped bf16 row of (kernel, variant) at head dim D (autotuning off picks it)."""
    for r in rows:
        if (r["kernel"], r["variant"], r["dtype"], r["D"]) == (kernel, variant, "bf16", D) and r["shipped"] \
                and not r.get("error"):
            return r
    return None


def tree_version(rows: List[Dict]) -> str:
    """Which kernels a table's rows are: ``v2`` (fused backward + dq finishing), ``v3`` (one program
    per head; the pre-pass writes q⊙M) or ``v4`` (the forward multiplies the mask into raw q)."""
    if any(r["kernel"] == "fused" for r in rows):
        return "v2"
    return "v4" if any(r["variant"] == FWD_MASK_Q_VARIANT for r in rows) else "v3"


def model(rows: List[Dict]) -> str:
    """The performance model of docs/performance.md from a table's JSON rows (this tree's, or an
    older tree's: ``--tree``; ``tree_version``), as text."""
    B, H, N, D = MODEL_SHAPE
    elems, heads = B * H * N * D, B * H
    mb = lambda b: b * elems / 1e6  # noqa: E731
    us = lambda b: b * elems / (COPY_TBPS * 1e12) * 1e6  # noqa: E731
    issue_us = lambda warp_instr: warp_instr / ISSUE_WARP_INSTR_PER_S * 1e6  # noqa: E731
    side = tree_version(rows)
    old = side == "v2"
    nq = -(-N // 64)
    fwd_keys = N // 64 + (0 if N % 64 == 0 else (1 if old or N % 64 > 32 else 0.5))  # the 32-key tail tile
    what = {"v2": "fused backward + dq finishing", "v3": "one program per head, pre-pass writes q⊙M",
            "v4": "one program per head, q⊙M made in the forward's prologue"}[side]
    lines = [f"tree: {side} ({what}); "
             f"elements per tensor {elems:,} ({mb(2):.1f} MB in bf16)"]
    for name, items in (("this tree", BYTES[side]), ("plain SDPA (FA2-style)", BYTES["sdpa"])):
        lo, hi = (sum(v[i] for v in items.values()) for i in (0, 1))
        key = side if name == "this tree" else "sdpa"
        lines.append(f"{name}: {LAUNCHES[key]} launches per fwd+bwd, {lo}–{hi} B/element = {mb(lo):.0f}–{mb(hi):.0f} MB")
    fwd = _sass(rows, "fwd", FWD_MASK_Q_VARIANT if side == "v4" else FWD_VARIANT)
    bwd = _sass(rows, "fused" if old else "bwd", "mask+dθ token" if old else "mask+dθ token, dsoft saved")
    for name, r, tiles, gemms in (("forward", fwd, nq * fwd_keys, 2), ("backward loop", bwd, nq * nq, 5)):
        lines.append(f"{name} {r['config']}: {r['loop_sass']} SASS per tile-warp, {r['warp_instr_64x64']} "
                     f"warp-instructions per 64x64 tile, {tiles:g} tiles per head: issue floor "
                     f"{issue_us(r['warp_instr_64x64'] * tiles * heads):.1f} µs, tensor floor "
                     f"{gemms * 2 * 64 * 64 * D * tiles * heads / (MMA_TFLOPS * 1e12) * 1e6:.1f} µs")
    # dθ's Philox regeneration: the static instructions the dθ epilogue adds, × the times it runs
    if old:
        fin, fin0 = _sass(rows, "dq_finish", "mask+dθ token"), _sass(rows, "dq_finish", "mask")
        philox = ((fin["sass_total"] - fin0["sass_total"]) * 4 * -(-N // 32) * heads) if fin and fin0 else 0
        extras = {"pre-pass (standalone, memory-bound)": (us(12), us(12)),
                  "dq finishing beyond FA2's dq cast (10 B/element)": (us(10), us(10)),
                  "dθ Philox in the finishing kernel (hidden … not hidden)": (0.0, issue_us(philox)),
                  "2 launches more than SDPA": (2 * LAUNCH_US, 2 * LAUNCH_US),
                  "backward mask reads (hidden … at copy speed)": (0.0, us(2))}
    else:
        m0 = _sass(rows, "bwd", "mask")
        w = int(bwd["config"].split()[1][1:])
        # per program: the epilogue loop's extra body once per query block, the key loop's (k load,
        # dM_k store) once per key block (the prologue's delta loop is the same in both)
        philox = ((bwd["other_loops_sass"] - m0["other_loops_sass"]) * nq
                  + (bwd["outer_loop_sass"] - m0["outer_loop_sass"]) * nq) * w * heads
        waves = heads / (132 * bwd["ctas_per_sm"])
        tail = (-(-waves // 1) - waves) / -(-waves // 1)
        regen = _sass(rows, "bwd", "mask+dθ token")
        regen_us = issue_us(((regen["other_loops_sass"] - m0["other_loops_sass"]) * nq
                             + (regen["outer_loop_sass"] - m0["outer_loop_sass"]) * nq) * w * heads)
        pre = BYTES[side][next(iter(BYTES[side]))][0]  # the pre-pass's bytes per element
        lines.append(f"(dθ's factor regenerated in the backward instead of saved: pre-pass {us(pre - 2):.1f} µs, "
                     f"epilogue 0–{regen_us:.1f} µs)")
        extras = {f"pre-pass (standalone, memory-bound; with dθ's factor, {pre} B/element)": (us(pre), us(pre))}
        if side == "v4":
            extras["forward's mask read, 2 B/element beyond SDPA's (hidden … at copy speed)"] = (0.0, us(2))
        extras.update({"dθ epilogue with the saved factor (hidden … not hidden)": (0.0, issue_us(philox)),
                       f"last-wave idle of one program per head ({waves:.2f} waves)": (0.0, tail * 2 / 3 * T_CORE_US[1])})
    # the attention loops' work beyond their mask-off twins' (mask loads and multiplies, dθ's loop
    # part): SDPA's loops do not do it; the twins are what "equal core efficiency" compares
    loop_extra = 0.0
    for r, twin, tiles in ((fwd, _sass(rows, "fwd", FWD_VARIANT), nq * fwd_keys),
                           (bwd, _sass(rows, "fused" if old else "bwd", "nomask"), nq * nq)):
        loop_extra += (r["loop_sass"] - twin["loop_sass"]) * int(r["config"].split()[1][1:]) * tiles * heads
    extras["attention loops' work beyond the mask-off twins' (hidden … not hidden)"] = (0.0, issue_us(loop_extra))
    lo, hi = (sum(v[i] for v in extras.values()) for i in (0, 1))
    lines.append("extras beyond plain SDPA's attention core, µs:")
    lines += [f"  {k}: {a:.1f}–{b:.1f}" for k, (a, b) in extras.items()]
    lines.append(f"  total: {lo:.1f}–{hi:.1f}")
    comp = (us(26) + 2 * LAUNCH_US, us(32) + 2 * LAUNCH_US)  # torch.compile(mask + SDPA): 26–32 B/element
    r_lo, r_hi = 1 + lo / T_CORE_US[1], 1 + hi / T_CORE_US[0]
    c_lo = min((t + comp[0]) / (t + hi) for t in T_CORE_US)
    c_hi = max((t + comp[1]) / (t + lo) for t in T_CORE_US)
    lines.append(f"predicted fwd+bwd ÷ plain SDPA (core {T_CORE_US[0]:.0f}–{T_CORE_US[1]:.0f} µs): "
                 f"{r_lo:.2f}–{r_hi:.2f}×")
    lines.append(f"torch.compile(mask + SDPA) extras {comp[0]:.1f}–{comp[1]:.1f} µs: ÷ plain SDPA "
                 f"{1 + comp[0] / T_CORE_US[1]:.2f}–{1 + comp[1] / T_CORE_US[0]:.2f}×; its time ÷ ours "
                 f"{c_lo:.2f}–{c_hi:.2f}×")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows as a JSON list here")
    ap.add_argument("--md", help="write the Markdown table here")
    ap.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    ap.add_argument("--candidates", action="store_true", help="also compile the pruned (unshipped) configs")
    ap.add_argument("--tree", help="compile the kernels of another checkout of this repository (its "
                    "ribkernels; e.g. `git worktree add /tmp/before REV`): the 'before' of a before/after table")
    ap.add_argument("--model", metavar="JSON", help="print the performance model's static inputs from a "
                    "table's JSON (compiles nothing)")
    ap.add_argument("--kernels", help="only these kernels (comma-separated: fwd,bwd,prepass,flat_noise)")
    ap.add_argument("--dims", help="only these head dims (comma-separated)")
    ap.add_argument("--dtypes", help="only these dtypes (comma-separated: fp16,bf16,fp32)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 on a compile failure, or a spill or serialised wgmma in a shipped config")
    args = ap.parse_args(argv)
    if args.model:
        with open(args.model) as f:
            print(model(json.load(f)))
        return 0
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real (no GPU is needed to compile)
    if args.tree:  # before anything imports ribkernels (the compile processes are forked from here)
        sys.path.insert(0, os.path.abspath(args.tree))
    from benchmarks.common import markdown_table

    t0 = time.time()
    split = lambda x: x.split(",") if x else None  # noqa: E731
    rows = run(args.jobs, args.candidates, split(args.kernels),
               [int(d) for d in split(args.dims)] if args.dims else None, split(args.dtypes))
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
