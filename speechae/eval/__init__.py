"""Evaluation of speech autoencoders: reconstruction, probes, ABX, PNMI, geometry, resources,
baselines, the per-experiment report (``speechae evaluate``) and cross-run comparison
(``speechae compare``).

Public API: :func:`evaluate_experiment`, :func:`evaluate_system`, :class:`EvalConfig`,
:func:`compare_experiments`; the metric functions live in their modules (``reconstruction``,
``probes``, ``abx``, ``units``, ``geometry``, ``resources``).
"""

from speechae.eval.pipeline import DEFAULT_BASELINES, evaluate_experiment, evaluate_system, make_baseline
from speechae.eval.suite import EvalConfig, EvalData

__all__ = ["DEFAULT_BASELINES", "EvalConfig", "EvalData", "evaluate_experiment", "evaluate_system",
           "make_baseline"]
