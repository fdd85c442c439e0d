"""Shared by the tests of ``impl="auto"``'s measured choice: a fake clock, the ``fresh`` fixture,
backends with fake costs, inputs."""
import pytest
import torch

from ribkernels.dcs import attention, backend_choice


SHAPE = (1, 2, 13, 8)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Measured choice on, an empty cache dir, nothing in memory, a fake clock."""
    monkeypatch.setenv(backend_choice.ENV_VAR, "1")
    monkeypatch.setenv("RIBKERNELS_CACHE", str(tmp_path / "cache"))
    clock = FakeClock()
    monkeypatch.setattr(backend_choice, "clock", clock)
    backend_choice.reset()
    yield clock
    backend_choice.reset()


def with_costs(monkeypatch, clock, costs_ms):
    """Make each backend in ``costs_ms`` cost that many fake ms per call (it still computes for real);
    returns the per-backend call counter."""
    calls = {name: 0 for name in costs_ms}
    for name, ms in costs_ms.items():
        real = attention.BACKENDS[name]

        def run(*args, _real=real.run, _name=name, _ms=ms, **kwargs):
            calls[_name] += 1
            clock.t += _ms / 1e3
            return _real(*args, **kwargs)

        monkeypatch.setitem(attention.BACKENDS, name, attention.Backend(real.why_not, run))
    return calls


def inputs(shape=SHAPE, theta_shape=None, grad=True, dtype=torch.float32):
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=grad) for _ in range(3))
    theta = torch.randn(theta_shape or shape, dtype=dtype, requires_grad=grad)
    return q, k, v, theta


def cache_file(tmp_path):
    return tmp_path / "cache" / backend_choice.CACHE_FILE_NAME
