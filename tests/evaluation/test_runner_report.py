"""The evaluation harness end to end on a tiny dataset: CLI, exclusions, report files."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from rtfsyn.checkpoint import load_checkpoint, save_checkpoint
from rtfsyn.errors import RtfsynError
from rtfsyn.evaluation.report import write_report
from rtfsyn.evaluation.runner import evaluate, parse_tasks
from test_cli import run_cli


def _trained_on(src, dest, cases: list[str], **extra):
    """A copy of checkpoint ``src`` that says it was trained on ``cases``."""
    state, info = load_checkpoint(src)
    config = {**info.config, **extra.pop("config", {})}
    return save_checkpoint(dest, state, config, step=3, info={"train_cases": cases, **extra})


def test_evaluate_cli_writes_full_report(capsys, tmp_path, tiny_checkpoint, tiny_bids) -> None:
    other = shutil.copy(tiny_checkpoint, tmp_path / "other.safetensors")
    out = tmp_path / "report"
    code, stdout, err = run_cli(
        capsys, "evaluate", "--model", str(tiny_checkpoint), "--model", str(other),
        "--data", str(tiny_bids), "--tasks", "t1:flair", "--out", str(out), "--max-cases", "2",
        "--artifact-kinds", "motion,rician_noise", "--artifact-cases", "1",
        "--volume-shape", "24x24x24", "-d", "cpu",
    )
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    # 2 models × 2 cases clean + 2 models × 1 case × 2 kinds × 3 severities
    assert len(rows) == 2 * 2 + 2 * 1 * 2 * 3
    assert {r["task"] for r in rows} == {"T1w->FLAIR"}
    assert {r["condition"] for r in rows} >= {"clean", "motion:1", "rician_noise:3"}
    clean = [r for r in rows if r["condition"] == "clean"]
    assert all(0.0 < float(r["ssim"]) <= 1.0 and float(r["mae"]) > 0 for r in clean)
    assert all(r["tissue_error"] != "" for r in clean)
    md = (out / "report.md").read_text()
    for section in ("Quality (clean inputs)", "Paired comparison", "Robustness", "Efficiency"):
        assert section in md
    assert "rtfsyn evaluate --model" in md  # the command that produced it
    assert (out / "report.html").read_text().count("<img") >= 2
    pngs = list((out / "figures").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert sorted(p.name for p in pngs) == ["panel_other_T1w-to-FLAIR.png",
                                            "panel_tiny_T1w-to-FLAIR.png",
                                            "robustness_T1w-to-FLAIR.png"]
    eff = json.loads((out / "results.json").read_text())["efficiency"]
    assert set(eff) == {"tiny", "other"}
    for e in eff.values():
        assert e["gflops"] > 0 and e["seconds"] > 0 and e["peak_mb"] > 50
    assert "clean inputs" in stdout and "report.md" in stdout


def test_training_cases_are_excluded(tmp_path, tiny_checkpoint, tiny_bids) -> None:
    ckpt = _trained_on(tiny_checkpoint, tmp_path / "run.safetensors",
                       ["bids/sub-01", "bids/sub-02"])
    res = evaluate([ckpt], [tiny_bids], parse_tasks("T1w:T2w"), tissue=False, device="cpu",
                   log=lambda _m: None)
    assert res.cases == ["bids/sub-03"] and sorted(res.excluded) == ["bids/sub-01",
                                                                      "bids/sub-02"]
    res = evaluate([ckpt], [tiny_bids], parse_tasks("T1w:T2w"), tissue=False, device="cpu",
                   include_training_cases=True, cases_only={"bids/sub-02"},
                   log=lambda _m: None)
    assert res.cases == ["bids/sub-02"] and len(res.rows) == 1
    ckpt_all = _trained_on(tiny_checkpoint, tmp_path / "all.safetensors",
                           [f"bids/sub-0{i}" for i in (1, 2, 3)])
    with pytest.raises(RtfsynError, match="no case left"):
        evaluate([ckpt_all], [tiny_bids], parse_tasks("T1w:T2w"), device="cpu",
                 log=lambda _m: None)


def test_holdout_site_and_bad_tasks(tmp_path, tiny_checkpoint, tiny_bids) -> None:
    zero_shot = _trained_on(tiny_checkpoint, tmp_path / "zs.safetensors", [],
                            config={"holdout_site": "A"})
    res = evaluate([zero_shot], [tiny_bids], parse_tasks("T1w:T2w"), holdout_site="A",
                   tissue=False, device="cpu", log=lambda _m: None)
    assert res.cases and all(r.site == "A" for r in res.rows)
    unseen_b = _trained_on(tiny_checkpoint, tmp_path / "b.safetensors", [], train_sites=["B"])
    with pytest.raises(RtfsynError, match="no evaluation case of site 'Z'"):
        evaluate([unseen_b], [tiny_bids], parse_tasks("T1w:T2w"), holdout_site="Z",
                 device="cpu", log=lambda _m: None)
    # a model that saw site A, or whose checkpoint cannot tell, is refused for --holdout-site A
    seen = _trained_on(tiny_checkpoint, tmp_path / "seen.safetensors", [],
                       train_sites=["A", "B"])
    with pytest.raises(RtfsynError, match="model seen was trained on site A"):
        evaluate([zero_shot, seen], [tiny_bids], parse_tasks("T1w:T2w"), holdout_site="A",
                 device="cpu", log=lambda _m: None)
    with pytest.raises(RtfsynError, match="cannot tell whether model tiny saw site A"):
        evaluate([tiny_checkpoint], [tiny_bids], parse_tasks("T1w:T2w"), holdout_site="A",
                 device="cpu", log=lambda _m: None)
    assert evaluate([unseen_b], [tiny_bids], parse_tasks("T1w:T2w"), holdout_site="A",
                    tissue=False, device="cpu", log=lambda _m: None).cases
    with pytest.raises(RtfsynError, match="SOURCE:TARGET"):
        parse_tasks("T1w-T2w")
    with pytest.raises(RtfsynError, match="artifact 'wobble' is unknown"):
        evaluate([tiny_checkpoint], [tiny_bids], parse_tasks("T1w:T2w"), artifacts=["wobble"],
                 device="cpu", log=lambda _m: None)


def test_report_writes_go_through_the_output_check(tmp_path) -> None:
    """issue 13: every report file passes the one output check (never over a model file)."""
    from rtfsyn.errors import OutputPathError
    from rtfsyn.evaluation.report import write_report
    from rtfsyn.evaluation.runner import EvalResult

    out = tmp_path / "report"
    out.mkdir()
    model_file = out / "report.md"  # a (silly) model path that a report file would replace
    model_file.write_text("weights")
    result = EvalResult(rows=[], models={"m": {"arch": "rtfsyn", "path": str(model_file),
                                              "step": 1}},
                        tasks=[("T1w", "T2w")], cases=[], excluded=[], holdout_site=None)
    with pytest.raises(OutputPathError, match="checkpoint of model m"):
        write_report(result, out)
    assert model_file.read_text() == "weights"


def test_renamed_dataset_keeps_exclusion_and_validation_is_labelled(
        tmp_path, tiny_checkpoint, tiny_bids) -> None:
    from rtfsyn.data.cases import load_cases
    from rtfsyn.data.splits import exclusion_key
    from rtfsyn.evaluation.report import robustness_table, summary_table

    keys = {c.subject: exclusion_key(c) for c in load_cases(tiny_bids)}
    ckpt = _trained_on(tiny_checkpoint, tmp_path / "run.safetensors", [keys["sub-01"]],
                       val_cases=[keys["sub-02"]], test_cases=[keys["sub-03"]])
    renamed = shutil.copytree(tiny_bids, tmp_path / "renamed-copy")
    res = evaluate([ckpt], [renamed], parse_tasks("T1w:T2w"), tissue=False, device="cpu",
                   log=lambda _m: None)
    assert res.cases == ["renamed-copy/sub-03"] and res.splits == {"renamed-copy/sub-03": "test"}
    assert res.exclusions == {"renamed-copy/sub-01": "training",
                              "renamed-copy/sub-02": "validation"}
    md = write_report(res, tmp_path / "rep0")["md"].read_text()
    assert "Excluded: 1 training and 1 validation case(s) of the compared models" in md
    res = evaluate([ckpt], [renamed], parse_tasks("T1w:T2w"), tissue=False, device="cpu",
                   include_validation_cases=True, artifacts=["gaussian_noise"],
                   severities=(1,), log=lambda _m: None)
    assert {r.case: r.split for r in res.rows} == {"renamed-copy/sub-02": "validation",
                                                    "renamed-copy/sub-03": "test"}
    header, body = summary_table(res)
    assert header[2] == "split" and sorted(row[2] for row in body) == ["test", "validation"]
    header, body = robustness_table(res)
    assert header[2] == "split" and sorted(row[2] for row in body) == ["test", "validation"]
    assert all("±" in row[7] for row in body)
    report = write_report(res, tmp_path / "rep")
    md = report["md"].read_text()
    assert "Excluded: 1 training and 0 validation case(s)" in md
    assert "rows were included on request" in md
    assert "| validation |" in md and "| test |" in md


def test_artifacts_seeded_by_case_not_position(tmp_path, tiny_checkpoint, tiny_bids) -> None:
    from rtfsyn.evaluation.runner import artifact_seed

    assert artifact_seed(0, "bids/sub-02") == artifact_seed(0, "bids/sub-02")
    assert artifact_seed(0, "bids/sub-02") != artifact_seed(0, "bids/sub-03")
    kw = dict(tissue=False, device="cpu", artifacts=["motion"], severities=(2,),
              log=lambda _m: None)
    alone = evaluate([tiny_checkpoint], [tiny_bids], parse_tasks("T1w:T2w"),
                     cases_only={"bids/sub-03"}, **kw)
    both = evaluate([tiny_checkpoint], [tiny_bids], parse_tasks("T1w:T2w"),
                    cases_only={"bids/sub-02", "bids/sub-03"}, **kw)

    def motion(res):
        return next(r.psnr for r in res.rows if r.case == "bids/sub-03"
                    and r.condition == "motion:2")

    assert motion(alone) == motion(both)
