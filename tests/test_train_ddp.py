"""A 2-process torchrun (gloo, CPU) run of the tiny config: DDP, the distributed PK split, the IBB
refresh all-reduced across ranks; both ranks must finish with identical parameters and IBB state."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")


def test_two_process_torchrun_ends_with_identical_parameters(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--config", TINY, "--data-root", str(tmp_path / "synthetic"),
           "--output-dir", str(run), "--progress", "log", "--epochs", "2", "--ibb-start-epoch", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    digests = [(run / f"params_rank{r}.sha256").read_text().split() for r in range(2)]
    assert len(digests[0]) == 2, digests  # model and IBB state
    assert digests[0] == digests[1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["ibb_on"] for r in metrics["epochs"]] == [False, True]
    assert set(metrics["final"]) >= {"mAP", "rank1", "rank5", "rank10", "mINP"}
    # logs come from rank 0 only: one line per epoch summary
    assert log.count("epoch 1/2 lr=") == 1, log[-4000:]
