"""``dcs_attention(impl="auto")``'s measured choice: keys, the fake-clock timing (rounds, budget) and
the JSON cache. CPU, small shapes. The paths that must never time: test_dcs_backend_choice_paths.py."""
import json

import pytest
import torch

import ribkernels as rk
from backend_choice_common import cache_file, fresh, inputs, with_costs  # noqa: F401 (fresh: a fixture)
from ribkernels.dcs import attention, backend_choice


# -------------------------------------------------------------------------------------------- keys

def test_bucket_ladder_rounds_up_by_at_most_one_and_a_half():
    assert [backend_choice.bucket(n) for n in (1, 16, 17, 25, 33, 197, 211, 256, 257, 1024, 1025)] == \
        [16, 16, 24, 32, 48, 256, 256, 256, 384, 1024, 1536]
    for n in range(17, 5000, 7):
        assert n <= backend_choice.bucket(n) < 1.5 * n + 1


def test_key_spells_device_dtype_bucket_theta_mode_training_and_grad():
    q, _, _, _ = inputs((2, 3, 211, 8), grad=False)
    key = backend_choice.make_key(q, torch.zeros(1, 3, 1, 8), None, training=True, grad=True)
    assert backend_choice.key_str(key) == (
        f"cpu:{backend_choice.cpu_name()}:threads={torch.get_num_threads()}|float32|bh=16|n=256|d=8|theta=1H1D|"
        "noise=-|train|grad=1")
    assert backend_choice.cpu_name() and "|" not in backend_choice.cpu_name()
    same = backend_choice.make_key(torch.zeros(2, 3, 197, 8), torch.zeros(3, 1, 8), None, training=True, grad=True)
    assert same == key  # N 197 and 211 share a bucket; θ [3, 1, 8] broadcasts like [1, 3, 1, 8]
    variants = [
        backend_choice.make_key(q.double(), torch.zeros(1, 3, 1, 8), None, training=True, grad=True),
        backend_choice.make_key(torch.zeros(2, 3, 300, 8), torch.zeros(1, 3, 1, 8), None, training=True, grad=True),
        backend_choice.make_key(torch.zeros(2, 3, 211, 16), torch.zeros(1, 3, 1, 16), None, training=True, grad=True),
        backend_choice.make_key(torch.zeros(8, 3, 211, 8), torch.zeros(1, 3, 1, 8), None, training=True, grad=True),
        backend_choice.make_key(q, torch.zeros(2, 3, 211, 8), None, training=True, grad=True),
        backend_choice.make_key(q, torch.zeros(1, 3, 1, 8), torch.zeros(2, 3, 211, 8), training=True, grad=True),
        backend_choice.make_key(q, torch.zeros(1, 3, 1, 8), None, training=False, grad=True),
        backend_choice.make_key(q, torch.zeros(1, 3, 1, 8), None, training=True, grad=False),
    ]
    assert len({key, *variants}) == len(variants) + 1
    # eval ignores explicit noise (dcs_attention drops it), so the key does too
    assert backend_choice.make_key(q, theta := torch.zeros(1, 3, 1, 8), torch.zeros(2, 3, 211, 8), training=False,
                                   grad=True) == backend_choice.make_key(q, theta, None, training=False, grad=True)


# --------------------------------------------------------------------------------- the measurement

@pytest.mark.parametrize("costs,winner", [({"sdpa": 5.0, "eager": 3.0}, "eager"),
                                          ({"sdpa": 2.0, "eager": 3.0}, "sdpa")])
def test_first_call_times_both_and_keeps_the_faster(fresh, monkeypatch, tmp_path, costs, winner):
    calls = with_costs(monkeypatch, fresh, costs)
    q, k, v, theta = inputs()
    out = rk.dcs_attention(q, k, v, theta, seed=5)
    assert calls == {name: backend_choice.WARMUP + backend_choice.REPS + (name == winner) for name in costs}
    torch.testing.assert_close(out, rk.dcs_attention(q, k, v, theta, seed=5, impl=winner), rtol=0, atol=0)
    rep = rk.available_backends(q, k, v, theta, report=True)
    assert rep.choice == winner and rep.source == "measured"
    assert rep.timings_ms == pytest.approx(costs)
    assert rep.reasons == rk.available_backends(q, k, v, theta)
    # later calls for the key (and for another N of the same bucket) do not time again
    before = dict(calls)
    rk.dcs_attention(q, k, v, theta, seed=6)
    q2, k2, v2, theta2 = inputs((1, 2, 15, 8))
    rk.dcs_attention(q2, k2, v2, theta2, seed=6)
    assert sum(calls.values()) == sum(before.values()) + 2 and calls[winner] == before[winner] + 2
    blob = json.loads(cache_file(tmp_path).read_text())
    assert blob["versions"] == backend_choice.versions() and blob["format"] == backend_choice.FORMAT
    (entry,) = blob["entries"].values()
    assert entry["choice"] == winner and entry["timings_ms"] == pytest.approx(costs)


def test_forward_only_keys_time_the_forward(fresh, monkeypatch):
    calls = with_costs(monkeypatch, fresh, {"sdpa": 4.0, "eager": 1.0})
    q, k, v, theta = inputs(grad=False)
    with torch.no_grad():
        rk.dcs_attention(q, k, v, theta, training=False)
    rep = rk.available_backends(q, k, v, theta, report=True, training=False)
    assert rep.key.endswith("|eval|grad=0") and rep.choice == "eager"
    assert calls["eager"] == backend_choice.WARMUP + backend_choice.REPS + 1


def test_timing_leaves_the_rng_stream_and_the_callers_grads_alone(fresh):
    q, k, v, theta = inputs()
    torch.manual_seed(11)
    got = rk.dcs_attention(q, k, v, theta)  # seed=None: the mask's seed comes from torch's generator
    after_auto = torch.get_rng_state()
    assert all(t.grad is None for t in (q, k, v, theta))
    chosen = rk.available_backends(q, k, v, theta, report=True).choice
    torch.manual_seed(11)
    want = rk.dcs_attention(q, k, v, theta, impl=chosen)
    assert torch.equal(after_auto, torch.get_rng_state())
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    grad_out = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, (q, k, v, theta), grad_out)
    want_grads = torch.autograd.grad(want, (q, k, v, theta), grad_out)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_a_candidate_that_raises_is_reported_not_chosen(fresh, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("No available kernel.\nsecond line")

    monkeypatch.setitem(attention.BACKENDS, "eager", attention.Backend(lambda *a: [], broken))
    with_costs(monkeypatch, fresh, {"sdpa": 9.0})
    q, k, v, theta = inputs()
    rk.dcs_attention(q, k, v, theta, seed=1)
    rep = rk.available_backends(q, k, v, theta, report=True)
    assert rep.choice == "sdpa" and rep.failed == {"eager": "RuntimeError: No available kernel."}
    assert list(rep.timings_ms) == ["sdpa"]


def test_measure_interleaves_and_chooses_by_per_round_ratios(fresh):
    order = []

    def candidate(name, costs):
        costs = iter(costs)

        def run():
            order.append(name)
            fresh.t += next(costs) / 1e3
        return run

    # a is faster in 3 of 5 rounds (a / b = 0.2, 2.25, 0.33, 20, 0.43: median 0.43)
    got = backend_choice.measure(
        {"b": candidate("b", [50, 50, 5, 4, 6, 5, 7]), "a": candidate("a", [50, 50, 1, 9, 2, 100, 3])},
        lambda: None, warmup=2, reps=5)
    assert order == ["b", "b", "a", "a"] + ["b", "a"] * 5
    assert got.choice == "a" and got.timings_ms == pytest.approx({"a": 3.0, "b": 5.0}) and got.failed == {}
    # the load doubles every other round, for both alike: the choice stays with the faster
    load = iter([1, 1, 2, 2, 1, 1, 2, 2, 1, 1] * 3)
    tie = {n: (lambda n=n: setattr(fresh, "t", fresh.t + next(load) * (10.0 if n == "x" else 10.5) / 1e3))
           for n in ("y", "x")}
    got = backend_choice.measure(tie, lambda: None, warmup=0, reps=5, max_reps=5)
    assert got.choice == "x"
    even = {n: (lambda: setattr(fresh, "t", fresh.t + 0.01)) for n in ("y", "x")}
    assert backend_choice.measure(even, lambda: None, warmup=0, reps=3).choice == "y"  # ties: the first


def test_close_leaders_get_more_rounds_until_max_reps(fresh):
    counts = {"a": 0, "b": 0, "c": 0}

    def candidate(name, ms):
        def run():
            counts[name] += 1
            fresh.t += ms / 1e3
        return run

    timings = backend_choice.measure({"a": candidate("a", 10.0), "b": candidate("b", 10.5),
                                      "c": candidate("c", 30.0)}, lambda: None, warmup=1, reps=5, max_reps=9,
                                     budget_s=10.0).timings_ms
    assert counts == {"a": 1 + 9, "b": 1 + 9, "c": 1 + 5}  # c is out of the race after the first rounds
    assert timings == pytest.approx({"a": 10.0, "b": 10.5, "c": 30.0})
    counts.update(a=0, b=0, c=0)
    backend_choice.measure({"a": candidate("a", 10.0), "b": candidate("b", 10.5)}, lambda: None, warmup=1,
                           reps=5, max_reps=50, budget_s=0.2)  # the extra rounds stop at the time budget
    assert counts["a"] == counts["b"] == 1 + 5 + 10  # 10 extra rounds of 20.5 fake ms pass 200 ms


def test_slow_inputs_get_fewer_rounds_but_at_least_min_reps(fresh):
    counts = {"a": 0, "b": 0}

    def candidate(name, ms):
        def run():
            counts[name] += 1
            fresh.t += ms / 1e3
        return run

    got = backend_choice.measure({"a": candidate("a", 700.0), "b": candidate("b", 1400.0)}, lambda: None,
                                 warmup=1, reps=5, budget_s=2.0)
    assert counts == {"a": 1 + backend_choice.MIN_REPS, "b": 1 + backend_choice.MIN_REPS} and got.choice == "a"


# ---------------------------------------------------------------------------------------- the file

def test_cache_file_is_used_by_a_fresh_process(fresh, monkeypatch):
    q, k, v, theta = inputs()
    calls = with_costs(monkeypatch, fresh, {"sdpa": 2.0, "eager": 1.0})
    rk.dcs_attention(q, k, v, theta, seed=0)
    backend_choice.reset()  # what a new process holds in memory
    calls.update(sdpa=0, eager=0)
    rk.dcs_attention(q, k, v, theta, seed=0)
    assert calls == {"sdpa": 0, "eager": 1}
    rep = rk.available_backends(q, k, v, theta, report=True)
    assert rep.choice == "eager" and rep.source == "cache file"
    assert rep.timings_ms == pytest.approx({"sdpa": 2.0, "eager": 1.0})


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2, 3]",
    json.dumps({"format": 99, "versions": {}, "entries": {}}),
    "ENTRY:" + json.dumps({"choice": "rm -rf /", "timings_ms": {}, "failed": {}}),
    "ENTRY:" + json.dumps({"choice": "eager", "timings_ms": {"eager": "fast"}, "failed": {}}),
    "OTHER-VERSION",
])
def test_a_corrupt_or_other_version_file_is_ignored_with_one_warning(fresh, monkeypatch, tmp_path, content):
    q, k, v, theta = inputs()
    key = backend_choice.key_str(backend_choice.make_key(q, theta, None, training=True, grad=True))
    if content.startswith("ENTRY:"):
        content = json.dumps({"format": backend_choice.FORMAT, "versions": backend_choice.versions(),
                              "entries": {key: json.loads(content[6:])}})
    elif content == "OTHER-VERSION":
        content = json.dumps({"format": backend_choice.FORMAT,
                              "versions": dict(backend_choice.versions(), torch="1.0.0"),
                              "entries": {key: {"choice": "eager", "timings_ms": {}, "failed": {}}}})
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    calls = with_costs(monkeypatch, fresh, {"sdpa": 1.0, "eager": 2.0})
    with pytest.warns(RuntimeWarning, match="ignoring the DCS backend-choice cache") as record:
        rk.dcs_attention(q, k, v, theta, seed=0)
        q2, k2, v2, theta2 = inputs((1, 4, 40, 8))
        rk.dcs_attention(q2, k2, v2, theta2, seed=0)
    assert len([w for w in record if "backend-choice" in str(w.message)]) == 1
    assert calls["sdpa"] == 2 * (backend_choice.WARMUP + backend_choice.REPS + 1)  # measured anew
    blob = json.loads(path.read_text())  # replaced by a valid file of these versions
    assert blob["versions"] == backend_choice.versions() and len(blob["entries"]) == 2
    assert {e["choice"] for e in blob["entries"].values()} == {"sdpa"}


def test_unwritable_cache_dir_warns_once_and_keeps_the_choice_in_memory(fresh, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    monkeypatch.setenv("RIBKERNELS_CACHE", str(blocker))
    calls = with_costs(monkeypatch, fresh, {"sdpa": 3.0, "eager": 1.0})
    q, k, v, theta = inputs()
    with pytest.warns(RuntimeWarning, match="cannot write the DCS backend-choice cache") as record:
        rk.dcs_attention(q, k, v, theta, seed=0)
        rk.dcs_attention(q, k, v, theta, seed=0)
        q2, k2, v2, theta2 = inputs((1, 4, 40, 8))
        rk.dcs_attention(q2, k2, v2, theta2, seed=0)
    assert len([w for w in record if "backend-choice" in str(w.message)]) == 1
    assert calls["eager"] == 2 * (backend_choice.WARMUP + backend_choice.REPS) + 3
    assert rk.available_backends(q, k, v, theta, report=True).source == "measured"


def test_a_cached_choice_that_cannot_run_the_input_is_measured_again(fresh, monkeypatch, tmp_path):
    q, k, v, theta = inputs()
    key = backend_choice.key_str(backend_choice.make_key(q, theta, None, training=True, grad=True))
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": backend_choice.FORMAT, "versions": backend_choice.versions(),
                                "entries": {key: {"choice": "triton", "timings_ms": {}, "failed": {}}}}))
    calls = with_costs(monkeypatch, fresh, {"sdpa": 1.0, "eager": 2.0})
    rk.dcs_attention(q, k, v, theta, seed=0)  # the Triton interpreter is never auto's choice on CPU
    assert calls == {"sdpa": backend_choice.WARMUP + backend_choice.REPS + 1,
                     "eager": backend_choice.WARMUP + backend_choice.REPS}
