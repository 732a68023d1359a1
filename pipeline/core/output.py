"""One output protocol for every stage: an output folder belongs to the config that made it.

    OUTPUT/run.json     {"stage", "fingerprint"}: written when a run claims the folder, before any result
    OUTPUT/<done>       the stage's summary (summary.json, report.json ...), holding the fingerprint, written last:
                        a folder without it, or with another fingerprint, is not a finished output of this config

`finished(fp)` gives the summary of a complete output made with fp; `claim(fp, overwrite)` ties the folder to fp
(a run of the same fp resumes; one made with another config is refused, naming the changed keys, or cleared with
overwrite); `complete(summary)` writes the summary last, atomically. `read_summary` is how another stage reads a
finished output's figures without knowing its file names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import DistillError
from .io import atomic_write_text, changed_keys


class OutputMismatch(DistillError, RuntimeError):
    """The output folder holds another config's results."""


class StageOutput:
    def __init__(self, folder: str | Path, stage: str, *, done: str = "summary.json", needs: tuple[str, ...] = (),
                 parts: tuple[str, ...] = ()):
        """done: the summary file written last; needs: what must exist beside it for the output to count as
        finished; parts: what this stage writes there (cleared when another config's run is replaced)."""
        self.root, self.stage, self.done, self.needs, self.parts = Path(folder), stage, done, needs, parts
        self.run_path, self.done_path = self.root / "run.json", self.root / done

    def finished(self, fingerprint: Any) -> dict | None:
        """The summary of a complete output made with this fingerprint, else None."""
        if not self.done_path.exists() or not all((self.root / n).exists() for n in self.needs):
            return None
        summary = json.loads(self.done_path.read_text())
        return summary if summary.get("fingerprint") == fingerprint else None

    def claimed_by(self) -> Any:
        """The fingerprint of the run that claimed the folder (None: unclaimed)."""
        if self.run_path.exists():
            return json.loads(self.run_path.read_text()).get("fingerprint")
        if self.done_path.exists():  # an output written before run.json existed: its summary says who made it
            return json.loads(self.done_path.read_text()).get("fingerprint")
        return None

    def claim(self, fingerprint: Any, *, overwrite: bool, write: bool = True) -> bool:
        """Tie the folder to this fingerprint. True: a run of the same config was here (resume it). Another
        config's output is refused unless overwrite, which clears it. write=False checks only (other ranks)."""
        old = self.claimed_by()
        same = old == fingerprint
        if old is not None and not same and not overwrite:
            changed = changed_keys(old, fingerprint) if isinstance(old, dict) and isinstance(fingerprint, dict) \
                else []
            what = f" (changed: {', '.join(changed)})" if changed else " or data"
            raise OutputMismatch(f"{self.root} holds a {self.stage} output made with another config{what}; pass "
                                 f"--{self.stage}.overwrite true to replace it, or choose another {self.stage}.output")
        if write:
            if not same:  # a fresh start: nothing of another run may be resumed or mistaken for this one
                for name in self.parts:
                    p = self.root / name
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            self.root.mkdir(parents=True, exist_ok=True)
            self.done_path.unlink(missing_ok=True)
            atomic_write_text(self.run_path, json.dumps({"stage": self.stage, "fingerprint": fingerprint}, indent=2))
        return same

    def complete(self, summary: dict) -> None:
        """Write the summary last (it must hold the fingerprint): from now on the output is finished."""
        assert "fingerprint" in summary, "a summary without its fingerprint could never be recognised as current"
        atomic_write_text(self.done_path, json.dumps(summary, indent=2, default=str))


def read_summary(folder: str | Path, done: str = "summary.json") -> dict | None:
    """The summary of a finished stage output (None when it is not finished)."""
    path = Path(folder) / done
    return json.loads(path.read_text()) if path.exists() else None
