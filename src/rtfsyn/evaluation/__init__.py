"""Evaluation harness: metrics per case, artifacts, tissue volumes, efficiency and reports."""

from __future__ import annotations

__all__ = ["evaluate", "write_report"]


def __getattr__(name: str):
    if name == "evaluate":
        from rtfsyn.evaluation.runner import evaluate

        return evaluate
    if name == "write_report":
        from rtfsyn.evaluation.report import write_report

        return write_report
    raise AttributeError(name)
