"""Click wrappers behind the ``speechae`` command (one module per area).

:class:`CommandGroup` is the one place that decides how a failed command reports: a user error
(bad config or value, missing or damaged input, a full disk, an experiment directory in use)
prints one line ``speechae <cmd>: error: <message>`` and exits with :data:`USER_ERROR_EXIT`; a
command's own ``click.ClickException`` is printed in the same format with its exit code (1);
usage errors keep click's usage text; anything else is a bug and keeps its traceback.
``--debug`` (anywhere on the command line) or ``SPEECHAE_DEBUG=1`` shows the traceback of user
errors too.  This module imports only click.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import click

USER_ERROR_EXIT = 2
DEBUG_ENV = "SPEECHAE_DEBUG"

# Exception classes (module.qualname, matched along the MRO so nothing heavy is imported here)
# whose message is written for the user.
USER_ERRORS = frozenset({
    "speechae.config.ConfigError",
    "speechae.data.validate.BadInputError",
    "speechae.recipes.archives.CorpusUnavailableError",
    "speechae.recipes.archives.BadArchiveError",
    "speechae.train.checkpoint.CheckpointError",
    "speechae.train.checkpoint.CheckpointWriteError",
    "speechae.train.run.ExperimentLockedError",
})
_OS_USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_ENV_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def debug_enabled() -> bool:
    """True with ``SPEECHAE_DEBUG=1`` (``--debug`` sets it, so torchrun workers inherit it)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _raised_in_speechae(error: BaseException) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``error`` looks like a bug.

    User errors: the classes in :data:`USER_ERRORS`; missing files and permissions; a full disk,
    quota or read-only file system; and a ``ValueError`` raised by speechae's own code (its
    messages are validation messages; one raised inside numpy or torch is not).
    """
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(error).__mro__}
    is_user = bool(names & USER_ERRORS) or isinstance(error, _OS_USER_ERRORS)
    is_user = is_user or (isinstance(error, OSError) and error.errno in _ENV_ERRNOS)
    is_user = is_user or (type(error) is ValueError and _raised_in_speechae(error))
    if not is_user:
        return None
    text = str(error).strip()
    if isinstance(error, OSError) and error.filename and not text.startswith(str(error.filename)):
        text = f"{error.filename}: {error.strerror or text}"
    return text or type(error).__name__


class CommandGroup(click.Group):
    """A click group whose subcommands report user errors in one line (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # documented here; consumed by main() wherever it appears
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                        help=f"show the traceback of user errors too (or set {DEBUG_ENV}=1)"))

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:  # noqa: D102
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:  # accepted after the subcommand too: `speechae train ... --debug`
            args = [a for i, a in enumerate(args) if not (a == "--debug" and i < end)]
            os.environ[DEBUG_ENV] = "1"
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:  # noqa: D102
        try:
            return super().invoke(ctx)
        except (click.exceptions.UsageError, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.exceptions.ClickException as e:  # a command's own one-line error: same format
            self._report(ctx, e.format_message())
            ctx.exit(e.exit_code)
        except EOFError as e:  # click would print only "Aborted!"
            raise RuntimeError(f"unexpected end of input: {e}") from e
        except Exception as e:
            message = user_error_message(e)
            if message is None or debug_enabled():
                raise
            self._report(ctx, message)
            ctx.exit(USER_ERROR_EXIT)

    @staticmethod
    def _report(ctx: click.Context, message: str) -> None:
        click.echo(f"speechae {ctx.invoked_subcommand or ''}".rstrip() + f": error: {message}", err=True)

