from __future__ import annotations

import pytest
import torch

from rtfsyn import __version__
from rtfsyn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    read_checkpoint_info,
    save_checkpoint,
    save_training_state,
)


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"arch": "x", "width": 4}, step=7,
                           info={"note": "hi"})
    weights, info = load_checkpoint(path)
    assert info.config == {"arch": "x", "width": 4}
    assert info.step == 7 and info.version == __version__ and info.info == {"note": "hi"}
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v)
    assert read_checkpoint_info(path).step == 7
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_not_a_checkpoint(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not an rtfsyn checkpoint"):
        load_checkpoint(other)


def test_training_state_weights_only(tmp_path) -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 3, "torch_rng": torch.get_rng_state(),
             "np_rng": {"state": {"state": 2**100, "inc": 5}}}
    path = save_training_state(tmp_path / "s.pt", state)
    back = load_training_state(path)
    assert back["step"] == 3 and back["np_rng"]["state"]["state"] == 2**100
    assert torch.equal(back["torch_rng"], state["torch_rng"])


class Evil:
    """Any class: unpickling it would run arbitrary code paths."""


def test_training_state_refuses_pickled_objects(tmp_path) -> None:
    path = tmp_path / "s.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_training_state(path)


# --------------------------------------------------------------------------- issue 13
def _flip_a_weight_bit(path) -> None:
    """Flip one exponent bit of a float32 weight in the data section of a safetensors file."""
    import json as _json
    import struct

    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = _json.loads(raw[8:8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + n + header[name]["data_offsets"][0]
    raw[start + 3] ^= 0x20  # exponent bit: the weight grows by orders of magnitude
    path.write_bytes(bytes(raw))


def test_digest_is_stored_and_checked(tmp_path, tiny_checkpoint) -> None:
    from rtfsyn.checkpoint import load_checkpoint, read_checkpoint_info

    info = read_checkpoint_info(tiny_checkpoint)
    assert info.weights_sha256 is not None and len(info.weights_sha256) == 64
    load_checkpoint(tiny_checkpoint)  # intact: loads
    _flip_a_weight_bit(tiny_checkpoint)
    with pytest.raises(CheckpointError, match="do not match the SHA-256") as exc:
        load_checkpoint(tiny_checkpoint)
    assert "\n" not in str(exc.value)


def test_non_finite_weights_refused_also_without_digest(tmp_path) -> None:
    from safetensors.torch import save_file

    from rtfsyn.checkpoint import CHECKPOINT_FORMAT, load_checkpoint

    path = tmp_path / "old.safetensors"
    meta = {"format": CHECKPOINT_FORMAT, "config": "{}", "step": "1"}  # an old checkpoint
    save_file({"w": torch.ones(3)}, str(path), metadata=meta)
    weights, info = load_checkpoint(path)  # no digest: still loads
    assert info.weights_sha256 is None and weights["w"].sum() == 3
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="weight w holds NaN or Inf"):
        load_checkpoint(path)


def test_bundled_model_has_a_valid_digest() -> None:
    from rtfsyn.checkpoint import load_checkpoint
    from rtfsyn.inference import default_model_path

    _, info = load_checkpoint(default_model_path())
    assert info.weights_sha256 is not None
