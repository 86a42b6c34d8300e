"""``rtfsyn demo`` in its reduced (``--quick``) mode, as CI runs it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from rtfsyn.demo import TARGETS, run_demo
from rtfsyn.errors import RtfsynError
from rtfsyn.inference import default_model_path
from test_cli import run_cli


def test_demo_quick_writes_everything(tmp_path, tiny_checkpoint, monkeypatch) -> None:
    from rtfsyn import io

    checked: list[str] = []
    original = io.OutputGuard.check

    def record(self, path, **kwargs):
        checked.append(str(path))
        return original(self, path, **kwargs)

    monkeypatch.setattr(io.OutputGuard, "check", record)
    out = tmp_path / "demo"
    res = run_demo(out, quick=True, model=tiny_checkpoint, device="cpu")
    # issue 13: every file the demo wrote went through the one output check
    written = {str(p) for p in out.rglob("*") if p.is_file()}
    assert written and written <= set(checked), sorted(written - set(checked))[:3]
    assert set(res.metrics) == set(TARGETS)
    for target, path in res.outputs.items():
        img = nib.load(str(path))
        truth = next((out / "phantom").rglob(f"*_{target}.nii.gz"))
        ref = nib.load(str(truth))
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
        assert np.isfinite(np.asarray(img.dataobj)).all()
        assert path.with_name(path.name.replace(".nii.gz", ".rtfsyn.json")).exists()  # provenance
        m = res.metrics[target]
        assert np.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1
        # the noise-free truth bounds every model: it scores above this (untrained) one
        assert m["ceiling_psnr"] > m["psnr"] and m["ceiling_ssim"] > m["ssim"]
    assert res.panel.stat().st_size > 5000
    html = res.report.read_text()
    assert "demo_panel.png" in html and "simulated" in html.lower() and "ceiling" in html
    saved = json.loads((out / "demo_metrics.json").read_text())
    assert saved["metrics"]["T2w"]["psnr"] == pytest.approx(res.metrics["T2w"]["psnr"])
    with pytest.raises(RtfsynError, match="not empty"):
        run_demo(out, quick=True, model=tiny_checkpoint, device="cpu")


@pytest.mark.skipif(not default_model_path().exists(), reason="no bundled model in this build")
def test_demo_cli_with_bundled_model(capsys, tmp_path) -> None:
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--quick", "--out", str(out), "-d", "cpu")
    assert code == 0, err
    assert "T1w → T2w" in stdout and "report:" in stdout
    assert (out / "demo_report.html").exists() and (out / "demo_panel.png").exists()
