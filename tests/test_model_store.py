"""Model registry: bundled model, `$RTFSYN_HOME` imports, `models` and `import-weights` CLI."""

from __future__ import annotations

import pytest

from rtfsyn.checkpoint import CheckpointError
from rtfsyn.errors import RtfsynError
from rtfsyn.inference import resolve_model_path
from rtfsyn.model_store import import_weights, list_models
from test_cli import run_cli


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RTFSYN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_import_then_list_and_resolve(home, tiny_checkpoint) -> None:
    dest = import_weights(tiny_checkpoint, name="my-model")
    assert dest == home / "models" / "my-model.safetensors"
    assert dest.read_bytes() == tiny_checkpoint.read_bytes()
    entries = {e.name: e for e in list_models()}
    assert entries["my-model"].source == "home" and entries["my-model"].arch == "rtfsyn"
    assert resolve_model_path("my-model") == dest
    with pytest.raises(RtfsynError, match="already exists"):
        import_weights(tiny_checkpoint, name="my-model")
    import_weights(tiny_checkpoint, name="my-model", overwrite=True)
    with pytest.raises(RtfsynError, match="only letters"):
        import_weights(tiny_checkpoint, name="../evil")


def test_import_rejects_bad_checkpoint(home, tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        import_weights(bad)
    assert not (home / "models").exists() or not list((home / "models").iterdir())


def test_models_and_import_cli(capsys, home, tiny_checkpoint, tmp_path) -> None:
    code, stdout, err = run_cli(capsys, "import-weights", str(tiny_checkpoint), "--name", "t1")
    assert code == 0, err
    assert "imported" in stdout
    code, stdout, err = run_cli(capsys, "models")
    assert code == 0, err
    assert "t1" in stdout and "home" in stdout
    code, _, err = run_cli(capsys, "import-weights", str(tmp_path / "missing.safetensors"))
    assert code != 0 and "missing.safetensors" in err and "Traceback" not in err


# --------------------------------------------------------------------------- issue 13
def test_import_refuses_bundled_names_and_corrupt_weights(home, tiny_checkpoint,
                                                          capsys) -> None:
    from test_checkpoint import _flip_a_weight_bit

    with pytest.raises(RtfsynError, match="name of a bundled model"):
        import_weights(tiny_checkpoint, name="rtfsyn-default")
    assert [e.name for e in list_models()].count("rtfsyn-default") == 1
    _flip_a_weight_bit(tiny_checkpoint)
    code, _, err = run_cli(capsys, "import-weights", str(tiny_checkpoint), "--name", "flipped")
    assert code == 2 and "SHA-256" in err and len(err.strip().splitlines()) == 1
    assert not (home / "models" / "flipped.safetensors").exists()
