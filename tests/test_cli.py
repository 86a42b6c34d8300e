from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rtfsyn import __version__
from rtfsyn.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and __version__ in out


def test_python_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "rtfsyn", "--version"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_error_is_one_line_without_traceback(capsys, tmp_path) -> None:
    code, _out, err = run_cli(capsys, "inspect", str(tmp_path / "missing"))
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert "Traceback" not in err


def test_debug_shows_traceback(capsys, tmp_path) -> None:
    from rtfsyn.errors import DatasetError

    with pytest.raises(DatasetError):
        main(["--debug", "inspect", str(tmp_path / "missing")])


def test_inspect_real(capsys, monkeypatch, real_data) -> None:
    from rich.console import Console

    from rtfsyn import cli

    monkeypatch.setattr(cli, "console", Console(width=250))
    code, out, _ = run_cli(capsys, "inspect", str(real_data))
    assert code == 0
    for name in ("BraTS-GLI-00001-000", "BraTS-MET-00110-000", "BraTS-case-preprocessed",
                 "MNI152-template"):
        assert name in out
    # ids namespaced by dataset: no "subject id 'patient19' occurs twice" any more
    assert re.search(r"\d+ cases \(T1w: \d+, T1Gd: \d+, T2w: \d+, FLAIR: \d+\)", out)


def test_inspect_fits_80_columns_or_wide(capsys, monkeypatch, tiny_bids) -> None:
    """issue 13: readable in an 80-column terminal: nothing cut, nothing wider than 80."""
    from rich.console import Console

    from rtfsyn import cli

    monkeypatch.setattr(cli, "console", Console(width=80))
    code, out, err = run_cli(capsys, "inspect", str(tiny_bids))
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out  # no value truncated with an ellipsis
    for sub in ("sub-01", "sub-02", "sub-03"):
        assert sub in out
    assert "28×28×28@1×1×1" in out and "--wide" in out
    code, out, err = run_cli(capsys, "inspect", str(tiny_bids), "--wide")
    assert code == 0, err
    assert "TR/TE" in out and "Siemens" in out
