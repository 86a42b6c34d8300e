"""``rtfsyn phantom``: writes a cohort, refuses non-empty folders, one-line errors."""

from __future__ import annotations

import pytest

from rtfsyn.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_phantom_writes_cohort_and_preview(capsys, tmp_path) -> None:
    out = tmp_path / "ph"
    code, stdout, _ = run_cli(capsys, "phantom", "--out", str(out), "--subjects", "2",
                              "--sites", "2", "--spacing", "6", "--seed", "1", "--lesions",
                              "--preview", "--no-progress")
    assert code == 0, stdout
    assert "2 subjects" in stdout
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-01", "sub-02"]
    assert "SiteB" in (out / "participants.tsv").read_text()


def test_phantom_refuses_non_empty_folder_without_force(capsys, tmp_path) -> None:
    (tmp_path / "existing.txt").write_text("x")
    code, _, err = run_cli(capsys, "phantom", "--out", str(tmp_path), "--spacing", "8",
                           "--subjects", "1", "--no-progress")
    assert code == 2
    line = _one_line(err)
    assert "not empty" in line and "--force" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]
    code, _, _ = run_cli(capsys, "phantom", "--out", str(tmp_path), "--spacing", "8",
                         "--subjects", "1", "--no-progress", "--force")
    assert code == 0 and (tmp_path / "sub-01" / "anat").is_dir()


@pytest.mark.parametrize("args, text", [
    (("--subjects", "0"), "subjects=0"),
    (("--spacing", "0.1"), "spacing=0.1"),
    (("--spacing", "20"), "spacing=20"),
    (("--sites", "6"), "sites=6"),
    (("--seed", "-3"), "seed=-3"),
])
def test_phantom_bad_arguments_are_one_line_errors(capsys, tmp_path, args, text) -> None:
    code, _, err = run_cli(capsys, "phantom", "--out", str(tmp_path / "x"), *args,
                           "--no-progress")
    assert code == 2
    assert text in _one_line(err)
    assert not (tmp_path / "x").exists()
