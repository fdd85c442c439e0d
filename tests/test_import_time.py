"""``import ribkernels`` stays cheap next to ``import torch``: torch._dynamo and Triton (together
1-2 s) are imported only when something compiles or launches a kernel."""
import json
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ["torch._dynamo", "torch._inductor", "triton", "timm", "torchvision", "matplotlib"]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import ribkernels
t2 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "ribkernels": t2 - t1,
                  "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _probe():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_loads_no_dynamo_no_triton_and_costs_under_half_a_second_over_torch():
    runs = [_probe() for _ in range(3)]
    assert runs[0]["loaded"] == [], f"import ribkernels pulled in {runs[0]['loaded']}"
    extra = statistics.median(r["ribkernels"] for r in runs)
    torch_s = statistics.median(r["torch"] for r in runs)
    assert extra <= 0.5, f"import ribkernels took {extra:.2f} s after import torch ({torch_s:.2f} s)"


def test_lazy_constant_mark_equals_torch_compiler_decorator():
    """The mark lazy_dynamo sets without dynamo is the one torch.compiler.assume_constant_result sets,
    and both users of it (the CPU pre-pass check, the backend choice's device label) carry it."""
    from ribkernels.dcs import backend_choice, lazy_dynamo
    from ribkernels.dcs import cpu_prepass as prepass

    def ours():
        return True

    def theirs():
        return True

    before = set(vars(ours))
    saved = sys.modules.pop("torch._dynamo", None)  # take the no-dynamo branch even if loaded
    try:
        lazy_dynamo.assume_constant_result(ours)
    finally:
        if saved is not None:
            sys.modules["torch._dynamo"] = saved
    import torch

    torch.compiler.assume_constant_result(theirs)
    assert set(vars(ours)) - before == set(vars(theirs)) - before != set()
    assert vars(ours) == vars(theirs)
    assert getattr(prepass.cpu_prepass_available, "_dynamo_marked_constant", False) is True
    assert getattr(backend_choice.device_label, "_dynamo_marked_constant", False) is True


@pytest.mark.parametrize("module", ["ribkernels.cli"])
def test_cli_entry_is_light_too(module):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = f"import sys, json, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
