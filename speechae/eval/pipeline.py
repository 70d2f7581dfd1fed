"""``speechae evaluate``: score an experiment's averaged model and its baselines, write
``<exp>/eval/metrics.json``, ``report.md`` and PNG figures.

Baselines (``--baselines``, comma-separated), all scored by the same code as the model:

==================  ========================================================================
``fbank``           the input 80-dim log-mel (100 Hz)
``mfcc``            13 MFCCs from the same log-mel (100 Hz)
``random_init``     the experiment's architecture, randomly initialised (seed fixed)
``mean_spectrum``   reconstruction reference: every frame predicted as the utterance's mean
                    log-mel (also the training set's global mean); no features
``hf:<dir>[@L]``    a local Hugging Face wav2vec 2.0 / HuBERT / WavLM checkpoint, hidden layer L
==================  ========================================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from speechae.data.datamodule import Labels, load_cuts
from speechae.eval.encoders import (FbankEncoder, FeatureEncoder, HFEncoder, MFCCEncoder, ModelEncoder,
                                    load_utterances, resolve_device, sample_cuts)
from speechae.eval.geometry import plot_pca, plot_spectra
from speechae.eval.reconstruction import mean_spectrum_metrics, plot_spectrograms
from speechae.eval.report import build_report, plot_summary, plot_training_curve
from speechae.eval.resources import read_metrics_jsonl, training_resources
from speechae.eval.suite import EvalConfig, EvalData, chance_levels, score_system
from speechae.eval.units import labels_at_rate
from speechae.utils.io import atomic_path

log = logging.getLogger("speechae.eval")

DEFAULT_BASELINES = ("fbank", "mfcc", "random_init", "mean_spectrum")


def resolve_path(path: str | Path, exp_dir: Path | None) -> Path:
    """A data path from a config: as given (relative to the cwd) or, failing that, relative to
    the recipe directory that holds ``exp/<name>`` (configs store recipe-relative paths)."""
    p = Path(path)
    if p.exists() or p.is_absolute() or exp_dir is None:
        return p
    for base in (exp_dir.parent.parent, exp_dir.parent, exp_dir):
        if (base / p).exists():
            return base / p
    return p


def recipe_dir_of(path: str | Path, exp_dir: Path | None) -> Path:
    """The directory a config's relative data path is relative to: the current directory when
    the path exists from here, else the recipe directory found by :func:`resolve_path`."""
    p = Path(path)
    if p.is_absolute() or p.exists() or exp_dir is None:
        return Path.cwd()
    for base in (exp_dir.parent.parent, exp_dir.parent, exp_dir):
        if (base / p).exists():
            return base.resolve()
    return Path.cwd()


def default_test_cuts(data_cfg: Mapping[str, Any]) -> str:
    """The test manifest next to the dev/train ones ("dev"/"train" in the name -> "test")."""
    for key, split in (("dev_cuts", "dev"), ("train_cuts", "train")):
        p = Path(str(data_cfg.get(key, "")))
        if split in p.name:
            return str(p.with_name(p.name.replace(split, "test")))
    raise ValueError("cannot derive the test cuts from the config; pass --test-cuts")


def make_baseline(spec: str, model_config: Mapping[str, Any] | None, seed: int = 0,
                  device: str | torch.device = "cpu", task: str = "autoencoder") -> FeatureEncoder | None:
    """A baseline system by name (see the module docstring); None for ``mean_spectrum``.
    Neural baselines run on ``device``; fbank and MFCC are computed on the CPU.  ``task``: the
    experiment's task (``uniwav`` builds its own model class for ``random_init``)."""
    if spec == "fbank":
        return FbankEncoder()
    if spec == "mfcc":
        return MFCCEncoder()
    if spec == "mean_spectrum":
        return None
    if spec == "random_init":
        if model_config is None:
            raise ValueError("random_init needs the experiment's model config")
        if task == "uniwav":
            from speechae.models.uniwav import build_uniwav as build_model
        else:
            from speechae.models import build_model

        torch.manual_seed(seed)
        return ModelEncoder(build_model(dict(model_config)).eval(), name="random_init", device=device)
    if spec.startswith("hf:"):
        path, _, layer = spec[3:].partition("@")
        return HFEncoder(path, layer=int(layer) if layer else -1, device=device)
    raise ValueError(f"unknown baseline {spec!r}; use fbank, mfcc, random_init, mean_spectrum or hf:<dir>[@layer]")


def open_cuts(path: str | Path) -> Any:
    """A cut manifest read lazily when it is JSON lines (a 960 h manifest is not held in
    memory just to draw a sample from it), else through :func:`load_cuts`."""
    from lhotse import load_manifest_lazy

    p = Path(path)
    if p.is_file() and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz")):
        return load_manifest_lazy(p)
    return load_cuts(p)


def load_eval_data(train_cuts: str | Path, test_cuts: str | Path, dev_cuts: str | Path | None,
                   lang_dir: str | Path, cfg: EvalConfig) -> EvalData:
    """Utterances of the three splits and the label tables.  Each split is a seeded sample
    within ``cfg.max_*_utts`` and ``cfg.max_*_hours`` (:func:`sample_cuts`); what was kept of
    each split is in ``EvalData.sampling``."""
    labels = Labels(lang_dir)
    samples = {"train": sample_cuts(open_cuts(train_cuts), cfg.max_train_utts, cfg.max_train_hours, cfg.seed),
               "test": sample_cuts(open_cuts(test_cuts), cfg.max_test_utts, cfg.max_test_hours, cfg.seed)}
    if dev_cuts is not None and Path(dev_cuts).is_file():
        samples["dev"] = sample_cuts(open_cuts(dev_cuts), cfg.max_test_utts, cfg.max_test_hours, cfg.seed)
    utts = {k: load_utterances(s, labels, desc=f"load {k}") for k, s in samples.items()}
    for k, s in samples.items():
        if len(s.cuts) < s.num_utts_total:
            log.info("%s: %d of %d utterances (%.2f of %.2f h; caps %s utts, %s h, seed %d)", k, len(s.cuts),
                     s.num_utts_total, s.hours, s.hours_total, s.max_utts, s.max_hours, cfg.seed)
    gmean = np.concatenate([u.log_mel for u in utts["train"]]).mean(0)
    return EvalData(utts["train"], utts["test"], utts.get("dev", []), labels, gmean,
                    {k: s.summary() for k, s in samples.items()})


def _figures(result: Any, data: EvalData, spectra: dict[str, Any], out_dir: Path, cfg: EvalConfig,
             records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    figs: dict[str, str] = {}
    test = result.test
    if test.recon is not None:
        pairs = [(u.cut_id, u.log_mel, r) for u, r in list(zip(data.test, test.recon))[: cfg.num_plot_utts]]
        figs["input vs reconstruction"] = plot_spectrograms(pairs, out_dir / "spectrograms.png").name
    figs["covariance spectrum"] = plot_spectra(spectra, out_dir / "covariance_spectrum.png").name
    if data.labels.phones is not None and all(u.phones is not None for u in data.test):
        labels = np.concatenate([labels_at_rate(u.phones, len(f), test.frame_rate)
                                 for u, f in zip(data.test, test.feats)])
        names = {v: k for k, v in data.labels.phones.items()}
        figs["PCA by phone"] = plot_pca(np.concatenate(test.feats), labels, names, out_dir / "pca_phones.png",
                                        seed=cfg.seed).name
    if (p := plot_training_curve(records, out_dir / "training_loss.png")) is not None:
        figs["training loss"] = p.name
    return figs


def _code_digest() -> str:
    """Digest of the evaluation code: a cached baseline result is stale once any of it changes."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("eval", "utils", "losses", "models", "data"):
        for f in sorted((root / sub).glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def baseline_cache_key(system: FeatureEncoder, data_key: Mapping[str, Any], cfg: EvalConfig,
                       model_config: Mapping[str, Any] | None = None) -> str:
    """Content key of one baseline's scores: its name, the data files (path, size, mtime), the
    evaluation settings, the device, the model config (random_init only) and the evaluation code."""
    import dataclasses
    import hashlib

    # the device is part of the key: a GPU's kernels give the same scores only up to rounding
    payload = {"system": system.name, "device": str(getattr(system, "device", "cpu")), "data": data_key,
               "cfg": repr(dataclasses.asdict(cfg)),
               "model": model_config if system.name == "random_init" else None, "code": _code_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def data_fingerprint(paths: Mapping[str, Path]) -> dict[str, Any]:
    """(path, size, mtime) of every data input; a directory is fingerprinted file by file."""
    out: dict[str, Any] = {}
    for name, p in sorted(paths.items()):
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out[name] = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    return out


def _score_baseline(b: FeatureEncoder, data: EvalData, cfg: EvalConfig, cache_dir: Path | None,
                    key: str | None, wait: bool = True) -> tuple[dict[str, Any], dict[str, float]] | None:
    """(sections, timings) of baseline ``b``: read from ``cache_dir/<name>-<key>.json`` when the
    same baseline was scored on the same data, settings and code (the arms of a grid share it),
    else scored and stored there.  Scoring holds a lock, so evaluations running side by side
    score each baseline once; with ``wait=False`` a baseline another process is scoring returns
    None instead of waiting (the caller scores the other baselines first)."""
    import fcntl

    if cache_dir is None or not key:
        res = score_system(b, data, cfg)
        return res.sections, res.timings
    path = cache_dir / f"{b.name}-{key}.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                log.info("baseline %s: cached scores %s", b.name, path)
                return cached["sections"], cached["timings"]
            except (OSError, ValueError, KeyError) as e:
                log.warning("baseline %s: ignoring unreadable cache %s (%s)", b.name, path, e)
        res = score_system(b, data, cfg)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"sections": res.sections, "timings": res.timings}, default=float),
                           encoding="utf-8")
        return res.sections, res.timings


def evaluate_system(system: FeatureEncoder, data: EvalData, out_dir: str | Path, baselines: Sequence[Any] = (),
                    cfg: EvalConfig = EvalConfig(), info: Mapping[str, Any] | None = None,
                    exp_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                    cache_keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score ``system`` and ``baselines`` (FeatureEncoders, or "mean_spectrum"), write
    metrics.json / report.md / figures to ``out_dir``, return the metrics dict.  With
    ``cache_dir`` and ``cache_keys`` (baseline name -> :func:`baseline_cache_key`), baseline
    scores are shared between evaluations of the same data."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = score_system(system, data, cfg)
    metrics: dict[str, Any] = {"system": system.name, **(info or {}), **result.sections,
                               "num_train_utts": len(data.train), "num_test_utts": len(data.test),
                               "num_dev_utts": len(data.dev),
                               "sampling": {**data.sampling, "seed": cfg.seed},
                               "device": str(getattr(system, "device", "cpu"))}
    if "reconstruction" in metrics:
        metrics["reconstruction"]["reference"] = mean_spectrum_metrics([u.log_mel for u in data.test],
                                                                       data.global_mean)
    metrics["chance"] = chance_levels(metrics)
    records = read_metrics_jsonl(Path(exp_dir) / "log" / "metrics.jsonl") if exp_dir else []
    if exp_dir is not None and (train_res := training_resources(exp_dir)):
        metrics["resources"]["training"] = train_res
    spectra = {system.name: result.sections["geometry"]["covariance_spectrum"]}
    timings = {system.name: result.timings}
    metrics["baselines"] = {}
    pending = []
    for b in baselines:
        if b is None or b == "mean_spectrum":
            ref = mean_spectrum_metrics([u.log_mel for u in data.test], data.global_mean)
            metrics["baselines"]["mean_spectrum"] = {"reconstruction": ref["utterance_mean"]}
        else:
            pending.append(b)
    for wait in (False, True):  # first those no other evaluation is scoring, then wait for the rest
        for b in list(pending):
            got = _score_baseline(b, data, cfg, Path(cache_dir) if cache_dir else None,
                                  (cache_keys or {}).get(b.name), wait=wait)
            if got is not None:
                metrics["baselines"][b.name], timings[b.name] = got
                spectra[b.name] = got[0]["geometry"]["covariance_spectrum"]
                pending.remove(b)
    metrics["baselines"] = {b if isinstance(b, str) else b.name: metrics["baselines"][b if isinstance(b, str) else b.name]
                            for b in (("mean_spectrum" if b is None else b) for b in baselines)}
    figs = _figures(result, data, spectra, out_dir, cfg, records)
    if (p := plot_summary({system.name: metrics, **metrics["baselines"]}, out_dir / "summary.png")) is not None:
        figs["headline metrics"] = p.name
    metrics["timing_s"] = {n: {k: round(v, 2) for k, v in t.items()} for n, t in timings.items()}
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, ensure_ascii=False), encoding="utf-8")
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(build_report(metrics, figs), encoding="utf-8")
    log.info("evaluation written to %s in %.1fs", out_dir, metrics["eval_seconds"])
    return metrics


WEIGHTS = ("window", "running", "raw")


def load_experiment_model(exp_dir: str | Path, weights: str = "window") -> tuple[torch.nn.Module, dict, dict]:
    """The model of ``exp_dir``'s checkpoints and ``(config, info)``.

    ``weights``: ``window`` (default) -- icefall's ``--use-averaged-model``: the mean of the
    weights over the steps between the oldest and newest kept checkpoint, from their running
    averages (falls back to ``running`` with fewer than two checkpoints); ``running`` -- the
    newest checkpoint's running average since step 0 (on short runs it still carries the early,
    near-random weights: on the tiny recipe it costs ~3 dB mel-LSD); ``raw`` -- the newest weights.

    An average that was never updated is the *initial* model: the trainer updates it every
    ``train.average_every`` steps, so a run shorter than that (``avg_step`` 0), or a window
    whose checkpoints hold the same ``avg_step``, has no average to give.  Then the raw newest
    weights are used instead and ``info["weights_note"]`` says so (the report shows it).

    The model is built and loaded by :func:`speechae.train.checkpoint.load_model_from_checkpoint`
    (raw weights); an average replaces its state dict.
    """
    from speechae.train.checkpoint import (average_checkpoints, cast_like, list_checkpoints, load_checkpoint,
                                           load_model_from_checkpoint)

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    exp_dir = Path(exp_dir)
    ckpt_dir = exp_dir / "checkpoints" if (exp_dir / "checkpoints").is_dir() else exp_dir
    paths = [p for _, p in list_checkpoints(ckpt_dir)]
    newest = load_checkpoint(exp_dir)
    step, avg_step = int(newest.get("step", 0)), int(newest.get("avg_step", 0) or 0)
    model, config = load_model_from_checkpoint(exp_dir, averaged=False)
    info: dict[str, Any] = {"checkpoint_step": step, "weights": "raw"}
    if weights == "raw":
        return model, config, info
    avg, label = None, ""
    if weights == "window" and len(paths) >= 2:
        first = load_checkpoint(paths[0])
        s0 = int(first.get("avg_step", 0) or 0)
        try:
            avg = average_checkpoints(paths, use_averaged=True)["model"]
            label = f"window ({s0}, {avg_step}]"
        except ValueError as e:  # no running averages stored, or no update between the two
            log.warning("window average impossible (%s); trying the running average", e)
    if avg is None and newest.get("model_avg") is not None and avg_step > 0:
        avg, label = newest["model_avg"], f"running average [0, {avg_step}]"
    if avg is None:
        why = (f"the averaged model was never updated (avg_step {avg_step}: the run's {step} steps are fewer "
               f"than train.average_every), so it would be the initial weights" if newest.get("model_avg") is not None
               else "the checkpoint holds no averaged model")
        info["weights_note"] = f"{weights} weights requested but {why}; scored the raw step-{step} weights instead"
        log.warning("%s: %s", exp_dir, info["weights_note"])
        return model, config, info
    model.load_state_dict(cast_like(avg, model.state_dict()))
    info["weights"] = label
    return model.eval(), config, info


def evaluate_experiment(exp_dir: str | Path, test_cuts: str | Path | None = None,
                        train_cuts: str | Path | None = None, dev_cuts: str | Path | None = None,
                        lang_dir: str | Path | None = None, baselines: Sequence[str] = DEFAULT_BASELINES,
                        cfg: EvalConfig = EvalConfig(), out_dir: str | Path | None = None,
                        weights: str = "window", cache_dir: str | Path | None = "default",
                        device: str = "auto", vocoder: str | Path | None = None,
                        listen: Any = "default") -> dict[str, Any]:
    """Evaluate ``<exp_dir>``'s model (``weights``: see :func:`load_experiment_model`); data
    paths default to the experiment's resolved config (test cuts: see
    :func:`default_test_cuts`).  Baseline scores are cached in ``cache_dir`` (``"default"``:
    ``<exp_dir>/../.eval_cache``, shared by the runs of an experiment grid; None: no cache).
    Neural systems encode on ``device`` (``auto``: the GPU when present).

    ``listen`` (a :class:`speechae.eval.listen.ListenConfig`; ``"default"``: its defaults;
    None: skipped) adds the waveform evaluation of :mod:`speechae.eval.listen` with the vocoder
    of the experiment directory ``vocoder`` (Griffin-Lim when None): ``metrics["listening"]``,
    a report section and example wavs (the original audio and the copy-syntheses are its
    reference rows: :func:`speechae.eval.compare.load_run` shows them as baselines)."""
    exp_dir = Path(exp_dir)
    model, config, weight_info = load_experiment_model(exp_dir, weights)
    data_cfg = config.get("data", {})
    paths = {
        "train_cuts": resolve_path(train_cuts or data_cfg["train_cuts"], exp_dir),
        "dev_cuts": resolve_path(dev_cuts or data_cfg.get("dev_cuts", ""), exp_dir),
        "test_cuts": resolve_path(test_cuts or default_test_cuts(data_cfg), exp_dir),
        "lang_dir": resolve_path(lang_dir or data_cfg.get("lang_dir", "data/lang"), exp_dir),
    }
    # Manifests of a recipe store feature paths relative to the recipe directory: read them from
    # there, so that evaluate works from any directory (the sampled utterances are loaded into
    # memory: cfg.max_*_hours bound them).
    recipe_dir = recipe_dir_of(train_cuts or data_cfg["train_cuts"], exp_dir)
    inputs = [paths[k].resolve() if paths[k].exists() else paths[k]
              for k in ("train_cuts", "test_cuts", "dev_cuts", "lang_dir")]
    with contextlib.chdir(recipe_dir):
        data = load_eval_data(*inputs, cfg)
    dev = resolve_device(device)
    systems = [make_baseline(b, config.get("model"), cfg.seed, dev, config.get("task", "autoencoder"))
               for b in baselines]
    system = ModelEncoder(model, name=exp_dir.name, stacks=cfg.stacks, device=dev)
    info = {"experiment": str(exp_dir), **weight_info, **{k: str(v) for k, v in paths.items()}}
    if cache_dir == "default":
        cache_dir = exp_dir.resolve().parent / ".eval_cache"
    fingerprint = data_fingerprint(paths)
    keys = {s.name: baseline_cache_key(s, fingerprint, cfg, config.get("model")) for s in systems if s is not None}
    out_dir = Path(out_dir or exp_dir / "eval")
    metrics = evaluate_system(system, data, out_dir, [s if s is not None else "mean_spectrum" for s in systems],
                              cfg, info, exp_dir, cache_dir, keys)
    if listen is None:
        return metrics
    from speechae.eval.listen import ListenConfig, evaluate_listening, listening_report, own_waveform_head

    listen_cfg = ListenConfig() if listen == "default" else listen
    # an end-to-end arm is heard through its own waveform head unless a vocoder is named
    vocoder_dir = resolve_path(vocoder, exp_dir).resolve() if vocoder else own_waveform_head(exp_dir)
    t0 = time.perf_counter()
    with contextlib.chdir(recipe_dir):
        result = evaluate_listening(model, open_cuts(inputs[1]), out_dir.resolve(), vocoder_dir, listen_cfg,
                                    Path(cache_dir).resolve() if cache_dir else None, dev)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["listening"] = result  # its reference rows are read by speechae compare as baselines
    metrics["eval_seconds"] = round(metrics["eval_seconds"] + result["seconds"], 1)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, ensure_ascii=False, default=float), encoding="utf-8")
    report = (out_dir / "report.md").read_text(encoding="utf-8")
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report + listening_report(result), encoding="utf-8")
    log.info("listening evaluation (%d utterances, %s) in %.1fs", result.get("num_utterances", 0),
             result.get("vocoder"), result["seconds"])
    return metrics
