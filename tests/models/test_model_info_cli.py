from __future__ import annotations

from rtfsyn.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_model_info_table(capsys) -> None:
    code, out, _ = _run(capsys, "model-info", "--config", "cpu-small", "--window", "16")
    assert code == 0
    for word in ("rtfsyn", "crossattn", "unet3d", "params", "MFLOP"):
        assert word in out


def test_model_info_bad_config_is_one_line_error(capsys) -> None:
    code, _, err = _run(capsys, "model-info", "--config", "does-not-exist")
    assert code == 2
    assert "does-not-exist" in err and len(err.strip().splitlines()) == 1
