"""The ``onnxstyle`` command: assembles the app from the commands in :mod:`onnxstyle.commands`.

Each command is a plain function in its own module there; what they share (options, error
and signal handling, opening an engine) is :mod:`onnxstyle.commands.options`, beneath them
all. Nothing here computes, and no command imports this module.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from .commands import batch, export, info, serve, stylize, sweep, video
from .commands.options import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, VERBOSE, err, out
from .errors import Terminated
from .version import __version__

app = typer.Typer(
    help="Neural style transfer (Gatys et al.) from exported ONNX graphs.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for fn in (export.export, stylize.stylize, sweep.sweep, info.info, info.cache, video.video, batch.batch, serve.serve):
    app.command()(fn)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="on an error, also print its full cause (traceback, the engine's text)")] = False,
) -> None:
    VERBOSE["on"] = verbose
    if version:
        out.print(f"onnxstyle {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())


def _usage_error_types() -> tuple[type[BaseException], ...]:
    # typer ≥ 0.20 vendors click (its errors derive from TyperException); older typer
    # raises click's own. Either way: an error with an exit code and a one-line message.
    types: list[type[BaseException]] = []
    if hasattr(typer, "TyperException"):
        types.append(typer.TyperException)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    """Console entry point: usage errors as one line (typer would draw a multi-line panel)."""
    try:
        rc = app(standalone_mode=False)
    except _usage_error_types() as e:
        code = getattr(e, "exit_code", EXIT_USAGE)
        ctx = getattr(e, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None and code == EXIT_USAGE else ""
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        err.print(f"[bold red]error:[/] {escape(msg + hint)}", soft_wrap=True)
        sys.exit(code)
    except typer.Exit as e:
        sys.exit(getattr(e, "exit_code", 0))
    except (typer.Abort, KeyboardInterrupt) as e:
        err.print("interrupted")
        sys.exit(EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
