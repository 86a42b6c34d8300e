"""Command-line interface: ``rtfsyn COMMAND ...`` (typer + rich).

Errors a user can cause are :class:`rtfsyn.errors.RtfsynError`; they are printed on one line
and the process exits with code 2. ``--debug`` (before the command) shows the traceback.
Heavy imports (torch, nibabel, …) happen inside the commands so that ``--help`` is fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from rtfsyn import __version__
from rtfsyn.errors import RtfsynError

app = typer.Typer(
    name="rtfsyn",
    help="Metadata-guided cross-modality 3D MRI synthesis (RTFSyn).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)

_STATE = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"rtfsyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version_callback, is_eager=True,
        help="Print the version and exit.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Metadata-guided cross-modality 3D MRI synthesis (RTFSyn)."""
    _STATE["debug"] = debug or os.environ.get("RTFSYN_DEBUG", "") not in ("", "0")


# --------------------------------------------------------------------------- inspect
@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="Dataset folder (BIDS, BraTS or IXI layout)."),
    layout: str = typer.Option(
        "auto", "--layout", help="auto, bids, brats or ixi."
    ),
) -> None:
    """List subjects × contrasts with key metadata; flag unpaired or mis-registered contrasts."""
    from rtfsyn.data.inspect import inspect_dataset

    inspect_dataset(path, layout=layout, console=console)


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RTFSYN_DEBUG", "") not in ("", "0")
    try:
        app(args=args, prog_name="rtfsyn", standalone_mode=True)
    except RtfsynError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
