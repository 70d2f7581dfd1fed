"""``speechae evaluate`` and ``speechae compare``: thin wrappers over speechae.eval."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--test-cuts", default=None, help="test manifest [default: the config's dev/train cuts with 'test']")
@click.option("--train-cuts", default=None, help="probe training manifest [default: the config's train_cuts]")
@click.option("--dev-cuts", default=None, help="held-out speakers for the speaker probe [default: config dev_cuts]")
@click.option("--lang-dir", default=None, help="label tables [default: the config's lang_dir]")
@click.option("--baselines", default="fbank,mfcc,random_init,mean_spectrum", show_default=True,
              help="comma-separated: fbank, mfcc, random_init, mean_spectrum, hf:<local dir>[@layer]; '' for none")
@click.option("--out-dir", default=None, help="output directory [default: EXP_DIR/eval]")
@click.option("--weights", type=click.Choice(["window", "running", "raw"]), default="window", show_default=True,
              help="window: average over the kept checkpoints' span (icefall --use-averaged-model); "
                   "running: newest running average since step 0; raw: newest weights")
@click.option("--phone-probe", type=click.Choice(["linear", "bilstm"]), default="linear", show_default=True)
@click.option("--token-probe", type=click.Choice(["linear", "bilstm"]), default="bilstm", show_default=True)
@click.option("--probe-epochs", type=int, default=40, show_default=True,
              help="phone-probe epochs (a linear CTC probe is cheap; 10 epochs leave it underfit)")
@click.option("--probe-seeds", type=int, default=1, show_default=True,
              help="train the phone probe with this many seeds and report mean (± std)")
@click.option("--token-probe-epochs", type=int, default=10, show_default=True)
@click.option("--kmeans-k", type=int, default=50, show_default=True, help="k-means clusters for PNMI")
@click.option("--abx-max-cells", type=int, default=1000, show_default=True,
              help="ABX cells (context x speaker x phone pair) scored at most")
@click.option("--max-train-utts", type=int, default=None, help="cap on training-split utterances for probes")
@click.option("--max-test-utts", type=int, default=None, help="cap on test / dev utterances")
@click.option("--max-train-hours", type=float, default=1.0, show_default=True,
              help="audio hours of the training split that probes and k-means are fitted on: a seeded sample "
                   "when the split is longer (0: all; memory grows with it)")
@click.option("--max-test-hours", type=float, default=0.0, show_default=True,
              help="audio hours scored per test / dev split: a seeded sample when longer (0: the whole "
                   "split, as published results are reported)")
@click.option("--device", default="auto", show_default=True,
              help="where neural systems encode, batch by batch: auto (GPU when present), cpu, cuda[:i]")
@click.option("--stacks", is_flag=True, help="also run the phone probe on every encoder stack")
@click.option("--num-threads", type=int, default=0, help="torch threads (0: leave the default)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--baseline-cache", default="default", show_default=True,
              help="directory for baseline scores shared by evaluations of the same data, settings and code "
                   "('default': EXP_DIR/../.eval_cache; 'none': always recompute)")
@click.option("--vocoder", default=None,
              help="vocoder experiment (stage 5's exp/vocoder) for the waveform evaluation [default: Griffin-Lim]")
@click.option("--listen-utts", type=int, default=12, show_default=True,
              help="test utterances resynthesised and judged on waveforms (STOI, PESQ, judges); 0: no "
                   "waveform evaluation")
@click.option("--listen-judges", default="speaker,asr,dnsmos", show_default=True,
              help="pretrained judges (each skipped with a note when its package is missing)")
def evaluate(exp_dir: str, test_cuts: str | None, train_cuts: str | None, dev_cuts: str | None, lang_dir: str | None,
             baselines: str, out_dir: str | None, weights: str, phone_probe: str, token_probe: str,
             probe_epochs: int, probe_seeds: int, token_probe_epochs: int, kmeans_k: int, abx_max_cells: int,
             max_train_utts: int | None, max_test_utts: int | None, max_train_hours: float, max_test_hours: float,
             device: str, stacks: bool, num_threads: int, seed: int, baseline_cache: str, vocoder: str | None,
             listen_utts: int, listen_judges: str) -> None:
    """Evaluate EXP_DIR's averaged model and baselines: EXP_DIR/eval/{metrics.json, report.md, *.png}."""
    from dataclasses import replace

    import torch

    from speechae.eval.pipeline import evaluate_experiment
    from speechae.eval.suite import EvalConfig
    from speechae.utils.logging import setup_logging

    setup_logging()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    cfg = EvalConfig(kmeans_k=kmeans_k, abx_max_cells=abx_max_cells, max_train_utts=max_train_utts,
                     max_test_utts=max_test_utts, max_train_hours=max_train_hours or None,
                     max_test_hours=max_test_hours or None, stacks=stacks, seed=seed,
                     phone_probe_seeds=probe_seeds)
    cfg.phone_probe = replace(cfg.phone_probe, kind=phone_probe, epochs=probe_epochs, seed=seed)
    cfg.token_probe = replace(cfg.token_probe, kind=token_probe, epochs=token_probe_epochs, seed=seed)
    names = [b.strip() for b in baselines.split(",") if b.strip()]
    from speechae.eval.listen import ListenConfig

    judges = tuple(j.strip() for j in listen_judges.split(",") if j.strip())
    listen = ListenConfig(num_utts=listen_utts, judges=judges) if listen_utts > 0 else None
    metrics = evaluate_experiment(exp_dir, test_cuts, train_cuts, dev_cuts, lang_dir, names, cfg, out_dir,
                                  weights=weights, cache_dir=None if baseline_cache == "none" else baseline_cache,
                                  device=device, vocoder=vocoder, listen=listen)
    out = Path(out_dir or Path(exp_dir) / "eval")
    click.echo(f"wrote {out}/metrics.json and {out}/report.md in {metrics['eval_seconds']:.0f}s")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("exp_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out-dir", required=True, help="where compare.md / .json / .csv / .png go")
@click.option("--reference", default=None,
              help="arm the others are tested against (name or unique part of it) "
                   "[default: the arm named like 'kl', else the first]")
def compare(exp_dirs: tuple[str, ...], out_dir: str, reference: str | None) -> None:
    """One report across evaluated EXP_DIRS: per arm (runs differing only in train.seed) mean ± std
    and 95 % interval over seeds, differences against the reference arm with paired tests, a
    reconstruction-vs-discrimination plot, and data-efficiency curves when runs differ in
    data.train_fraction."""
    from speechae.eval.compare import UnknownArmError, compare_experiments

    try:
        result = compare_experiments(exp_dirs, out_dir, reference=reference)
    except UnknownArmError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"compared {len(exp_dirs)} runs in {len(result['arms'])} arms (reference {result['reference']}): "
               f"{out_dir}/compare.md")
