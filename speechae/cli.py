"""The ``speechae`` command.  Every subcommand is a thin wrapper over a library function.

Subcommands live in ``speechae/bin/*.py`` and are imported lazily, so ``speechae --help`` stays
fast and a recipe stage only pays for the modules it uses.
"""

from __future__ import annotations

import importlib

import click

from speechae.bin import CommandGroup

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "synth-corpus": "speechae.bin.data:synth_corpus",
    "prepare-manifests": "speechae.bin.data:prepare_manifests",
    "compute-fbank": "speechae.bin.data:compute_fbank",
    "prepare-targets": "speechae.bin.data:prepare_targets",
    "inspect-data": "speechae.bin.data:inspect_data",
    "export-shar": "speechae.bin.data:export_shar",
    "model-summary": "speechae.bin.model:model_summary",
    "evaluate": "speechae.bin.eval:evaluate",
    "compare": "speechae.bin.eval:compare",
    "train": "speechae.bin.train:train",
    "average": "speechae.bin.train:average",
    "fixture-corpus": "speechae.bin.corpus:fixture_corpus",
    "download-corpus": "speechae.bin.corpus:download_corpus",
    "prepare-corpus": "speechae.bin.corpus:prepare_corpus",
    "encode": "speechae.bin.infer:encode",
    "decode": "speechae.bin.infer:decode",
    "resynth": "speechae.bin.infer:resynth",
    "export": "speechae.bin.infer:export",
}


class LazyGroup(CommandGroup):
    """A click group whose commands are imported on first use (user errors: one line, see
    :class:`speechae.bin.CommandGroup`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """speechae: continuous-latent speech autoencoder recipes."""


if __name__ == "__main__":
    main()
