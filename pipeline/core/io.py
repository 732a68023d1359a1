"""Small helpers every stage's output uses: atomic writes, dataset fingerprints, config diffs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_dataset_atomically(dataset, dest: Path) -> None:
    """save_to_disk into a temp folder beside `dest`, then swap it in: `dest` is never half written."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    was_enabled = is_progress_bar_enabled()
    disable_progress_bar()  # a bar for a sub-second save is noise under the stage's own output
    try:
        dataset.save_to_disk(str(tmp))
    finally:
        if was_enabled:
            enable_progress_bar()
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested mappings, as `key old -> new` lines."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


def data_fingerprint(ds) -> str:
    """A hash of the rows' content (the Arrow files when the dataset is backed by files)."""
    files = sorted({f["filename"] for f in ds.cache_files})
    if not files:
        return ds._fingerprint
    h = hashlib.sha256()
    for name in files:
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_dataset_folder_or_hub(source: str, path: Path, key: str, expected: str, error: type):
    """`path` (a save_to_disk folder) if it exists, else `source` as a Hub dataset id: one Dataset. What cannot be
    used is an `error` naming the key (`expected`: what the folder should be, for the message)."""
    import datasets

    if path.exists():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise error(f"{key} {source} is not a dataset folder (expected {expected})") from None
    else:
        try:
            ds = datasets.load_dataset(source, split="train")
        except (ConnectionError, OSError, ValueError) as e:
            raise error(f"{key} {source} is not a local file or folder and could not be loaded from the Hub "
                        f"({type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise error(f"{key} {source} holds several splits ({', '.join(ds)}); point {key} at one")
    return ds


def weights_id(model: str) -> str | None:
    """Names, sizes and times of a local model's weight files: a model retrained in place is a new model."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None  # a Hub id or a served name: its revision identifies it
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    blob = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
