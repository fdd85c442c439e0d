"""Static sm_90 experiment (no GPU): the fused backward on pre-masked operands — its loop loads the
pre-pass's q⊙M and k⊙M plain (no mask tile, no multiply), the mask is read only for dk⊙M in the
epilogue, raw k only for dθ — against the shipped kernel, which multiplies the saved mask into raw q/k
tiles in its loop. A throw-away variant: made by rewriting ``backward_fused.py``'s source (fails
loudly if the anchors moved), compiled like ``benchmarks.sm90_static`` (bf16, shipped configs).

    python -m benchmarks.premasked_backward_sm90

Prints one line per (config, D, dθ variant): registers, spill bytes, shared memory, loop integer
ops, warpgroup-MMA commit groups per loop iteration, mma.sync count and ptxas's C7515 note.
"""
import importlib.util
import os
import sys
import tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REWRITES = [
    ("def dcs_bwd_fused_kernel(\n    Q, K, V, MSK,", "def dcs_bwd_fused_kernel(\n    QM, KM, Q, K, V, MSK,"),
    ("    km, keep_k = masked_tile(K, mask_ptrs(MSK, bh64, offs_n, N, HEAD_DIM), b64, h64, offs_n, offs_d, n_valid,\n"
     "                             skb, skh, skn, skd, MASKED)",
     "    km = load_bhnd(KM, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd)\n"
     "    keep_k = tl.load(mask_ptrs(MSK, bh64, offs_n, N, HEAD_DIM), mask=n_valid[:, None], other=0.0)"),
    ("        qm, keep_qi = masked_tile(Q, mq_ptrs, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd, MASKED)\n"
     "        mq_ptrs += BLOCK_M * HEAD_DIM\n",
     "        qm = load_bhnd(QM, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd)\n"),
    ("from .backward import", "from ribkernels.dcs.triton.backward import"),
    ("from .noise import", "from ribkernels.dcs.triton.noise import"),
]


def premasked_kernel():
    """The rewritten ``dcs_bwd_fused_kernel`` (loaded from a temporary module)."""
    from ribkernels.dcs.triton import backward_fused

    src = open(backward_fused.__file__).read()
    for old, new in REWRITES:
        if old not in src:
            raise RuntimeError(f"premasked_backward_sm90: anchor not found in backward_fused.py: {old[:60]!r}")
        src = src.replace(old, new, 1)
    path = os.path.join(tempfile.mkdtemp(), "premasked_fused.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("premasked_fused", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.dcs_bwd_fused_kernel


def main() -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from benchmarks import sm90_static as S
    from ribkernels.dcs.triton import launch
    from ribkernels.dcs.triton.noise import MODE_PHILOX

    fn, dt = premasked_kernel(), "bf16"
    for D in S.HEAD_DIMS:
        for bm, bn, w, st in launch.SHIPPED["fused"][D]:
            for vname, dth_mode in (("mask+dθ token", 1), ("mask", 0), ("mask+dθ channel", 2)):
                consts = dict(HEAD_DIM=D, DOT_PREC="tf32", BLOCK_M=bm, BLOCK_N=bn, MODE=MODE_PHILOX, TAU_ONE=True,
                              MASKED=True, DTH_MODE=dth_mode)
                ptrs = {n: f"*{dt}" for n in ("QM", "KM", "Q", "K", "V", "DO", "DK", "DV", "TH", "NZ", "MSK")}
                ptrs.update(LSE="*fp32", DELTA="*fp32", DQACC="*fp32", RNG="*i64",
                            DTH=f"*{dt}" if dth_mode == 1 else "*fp32")
                sig, constexprs, attrs = S._signature(fn, dt, consts, ptrs)
                ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                                    target=GPUTarget("cuda", 90, 32), options=dict(num_warps=w, num_stages=st))
                r = S._sass_counts(ck.asm["cubin"])
                c7515 = S._wgmma_serialized(ck.asm["ptx"]) if r.get("loop_mma") else ""
                print(f"fused on q⊙M, k⊙M [{vname}] {bm}x{bn} w{w} s{st} {dt} D={D}: registers {r.get('registers')}, "
                      f"spill {r.get('stack', 0) + r.get('local_bytes', 0)} B, shared {ck.metadata.shared} B, "
                      f"loop int ops {r.get('loop_int_ops')}, loop wgmma groups {r.get('loop_mma_groups')}, "
                      f"loop mma.sync {r.get('loop_hmma')}, C7515 {'yes' if c7515 else 'no'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
