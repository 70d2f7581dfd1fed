"""Weight schedules: values at the ends of the ramps and strict parsing."""

import pytest

from speechae.config import ConfigError
from speechae.losses import build_schedule


def test_constant_and_numbers():
    assert build_schedule(0.05)(123) == 0.05
    assert build_schedule({"type": "constant", "value": 2})(0) == 2.0
    assert build_schedule(0).always_zero()


def test_linear_warmup():
    s = build_schedule({"type": "linear_warmup", "start": 0, "end": 1e-3, "steps": 2000})
    assert s(0) == 0.0 and abs(s(1000) - 5e-4) < 1e-12 and s(2000) == 1e-3 and s(10**6) == 1e-3
    d = build_schedule({"type": "linear_warmup", "start": 0, "end": 1, "steps": 10, "delay": 5})
    assert d(5) == 0.0 and abs(d(10) - 0.5) < 1e-12 and d(15) == 1.0


def test_cosine():
    s = build_schedule({"type": "cosine", "start": 0, "end": 2, "steps": 100})
    assert s(0) == 0.0 and abs(s(50) - 1.0) < 1e-12 and abs(s(100) - 2.0) < 1e-12
    assert s(25) < 0.5  # slow start, unlike the linear ramp


@pytest.mark.parametrize("bad", [{"type": "exp"}, {"type": "linear_warmup", "stop": 1},
                                 {"type": "constant", "value": "x"}, True, "0.1"])
def test_bad_specs(bad):
    with pytest.raises(ConfigError):
        build_schedule(bad)
