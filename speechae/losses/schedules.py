"""Loss-weight schedules: the one place where KL warm-up and regularizer ramps are defined.

A weight in the loss table (:class:`speechae.losses.builder.LossConfig.weights`) is either a
plain number (constant) or a mapping with a ``type`` key:

* ``{type: constant, value: 0.05}``
* ``{type: linear_warmup, start: 0.0, end: 1e-3, steps: 2000, delay: 0}`` -- ``start`` until
  ``delay``, then a linear ramp reaching ``end`` after ``steps`` more steps, then ``end``
  (the classic VAE beta warm-up, Bowman et al. 2016);
* ``{type: cosine, start: 0.0, end: 1.0, steps: 2000, delay: 0}`` -- half-cosine ramp from
  ``start`` to ``end``, smoother at both ends than the linear ramp.

Schedules are pure functions of the global step so that resuming at step ``s`` reproduces the
weight exactly and every DDP rank agrees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Union

from speechae.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ConstantWeight:
    """A weight that never changes."""

    value: float = 1.0

    def __call__(self, step: int) -> float:
        """Weight at global ``step``."""
        return float(self.value)

    def always_zero(self) -> bool:
        """True when the term can never receive gradient (log-only)."""
        return self.value == 0.0


@dataclasses.dataclass(frozen=True)
class _Ramp:
    """``start`` for ``delay`` steps, then a ramp to ``end`` over ``steps`` steps; subclasses
    give the ramp's shape as a map of progress in [0, 1] to [0, 1]."""

    start: float = 0.0
    end: float = 1.0
    steps: int = 1000
    delay: int = 0

    def _shape(self, frac: float) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        """Weight at global ``step``."""
        if step <= self.delay:
            return float(self.start)
        frac = min(1.0, (step - self.delay) / max(1, self.steps))
        return float(self.start + (self.end - self.start) * self._shape(frac))

    def always_zero(self) -> bool:
        """True when the term can never receive gradient (log-only)."""
        return self.start == 0.0 and self.end == 0.0


@dataclasses.dataclass(frozen=True)
class LinearWarmup(_Ramp):
    """``start`` for ``delay`` steps, then linear to ``end`` over ``steps`` steps."""

    def _shape(self, frac: float) -> float:
        return frac


@dataclasses.dataclass(frozen=True)
class CosineRamp(_Ramp):
    """``start`` for ``delay`` steps, then a half-cosine ramp to ``end`` over ``steps`` steps."""

    def _shape(self, frac: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * frac))


Schedule = Union[ConstantWeight, LinearWarmup, CosineRamp]

SCHEDULES: dict[str, type] = {
    "constant": ConstantWeight,
    "linear_warmup": LinearWarmup,
    "cosine": CosineRamp,
}


def build_schedule(spec: Any, where: str = "weight") -> Schedule:
    """Turn a weight-table entry (number or ``{type: ..., ...}`` mapping) into a schedule.

    Unknown schedule types or keys raise :class:`speechae.config.ConfigError`.
    """
    if isinstance(spec, (ConstantWeight, LinearWarmup, CosineRamp)):
        return spec
    if isinstance(spec, bool):
        raise ConfigError(f"{where}: expected a number or a schedule mapping, got {spec!r}")
    if isinstance(spec, (int, float)):
        return ConstantWeight(float(spec))
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a number or a schedule mapping, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in SCHEDULES:
        raise ConfigError(f"{where}: schedule type {kind!r} is not one of {sorted(SCHEDULES)}")
    cls = SCHEDULES[kind]
    allowed = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for schedule {kind}; allowed {sorted(allowed)}")
    kwargs = {}
    for key, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
        kwargs[key] = int(value) if key in ("steps", "delay") else float(value)
    return cls(**kwargs)
