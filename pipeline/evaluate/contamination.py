"""Decontamination check of the evaluate stage: read the filter's report and refuse benchmarks whose evaluated
problems it found in the training problems (the filter's `decontaminate` n-gram hits), unless forced."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.data import BENCHMARKS
from ..core.errors import DistillError
from ..core.log import get_logger
from ..core.stages import summary_path

logger = get_logger("evaluate")


class ContaminationError(DistillError, ValueError):
    """A benchmark overlaps the training problems, or the report cannot be read; a one-line message."""


def canonical_source(source: str, split: str | None = None) -> str:
    """One spelling per benchmark: the bundled name with its split, or a resolved local path, or the Hub id."""
    if split and f"{source}_{split}" in BENCHMARKS:
        return f"{source}_{split}"
    if source in BENCHMARKS:
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def check_contamination(report: str | None, benches: list, *, force: bool) -> None:
    """Refuse benchmarks whose evaluated problems the filter's decontamination found in the training
    problems (unless forced); warn about benchmarks the filter did not check at all. Sets the `contamination`
    of each benchmark (evaluate.store.Benchmark) to what was found."""
    if not report:
        return
    path = Path(report)
    path = summary_path("filter", path) if path.is_dir() else path
    if not path.is_file():
        raise ContaminationError(f"evaluate.decontamination_report: {path} not found (give a distill filter "
                                 f"output folder or its report.json, or null to skip the check)")
    try:
        d = json.loads(path.read_text())["decontamination"]
        checked = {canonical_source(name) for name in d["benchmarks"]}
        hits = d["hits"]
    except (ValueError, KeyError, TypeError):
        raise ContaminationError(f"evaluate.decontamination_report: {path} is not a distill filter report "
                                 f"(no decontamination section)") from None
    refused = []
    for b in benches:
        key = canonical_source(b.cfg.source, b.cfg.split)
        if key not in checked:
            b.contamination = "not checked by the filter"
            logger.warning(f"evaluate: warning: the filter ({path}) did not check {b.name} for contamination; add it to "
                  f"filter.decontaminate and re-filter to be sure")
            continue
        ids = set(b.problems["id"])
        flagged = {h["benchmark_id"] for h in hits if canonical_source(h["benchmark"]) == key} & ids
        if not flagged:
            b.contamination = "clean"
        elif force:
            b.contamination = f"{len(flagged)} problems flagged (forced)"
            logger.warning(f"evaluate: warning: {b.name}: {len(flagged)} of its problems were flagged by the filter's "
                  f"decontamination; evaluating them anyway (evaluate.force)")
        else:
            refused.append(f"{b.name} ({len(flagged)} of {len(ids)} problems)")
    if refused:
        raise ContaminationError(f"the filter's decontamination ({path}) found training problems overlapping "
                                 f"{', '.join(refused)}; scores there would be inflated. Evaluate anyway with "
                                 f"--evaluate.force true, or drop those benchmarks")
