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


HUB_PREFIX = "hf://datasets/"  # an explicit Hub id, for an `org/name` whose `org` is also a local folder


def load_dataset_folder_or_hub(source: str, path: Path, key: str, expected: str, error: type):
    """`path` (a save_to_disk folder) if it exists, else `source` as a Hub dataset id: one Dataset, with rows. What
    cannot be used is an `error` naming the key (`expected`: what the folder should be, for the message): a missing
    local-looking path (`core.data.looks_like_path`) is told as missing and never sent to the Hub."""
    import datasets

    from .data import looks_like_path, missing_path
    from .errors import DistillError

    try:
        if path.exists():
            ds = load_saved(path, label=f"{key} {source}", expected=expected)
        elif looks_like_path(source):
            raise error(f"{key}: {missing_path(source)}")
        else:
            ds = load_hub_dataset(source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source, "train")
    except error:
        raise
    except DistillError as e:
        text = str(e)
        raise error(text if text.startswith(f"{key} ") else f"{key}: {text}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise error(f"{key} {source} holds several splits ({', '.join(ds)}); point {key} at one")
    if len(ds) == 0:
        raise error(f"{key} {source}: no rows (the dataset is empty; expected {expected} with rows)")
    return ds


def load_saved(path: Path, *, label: str, split: str | None = None, expected: str | None = None):
    """`datasets.load_from_disk(path)`, what cannot be read a one-line `DataError` naming `label`. A dataset saved
    with no rows has no data files, which load_from_disk cannot read (IndexError): it is told as empty here."""
    import datasets

    from .errors import DataError

    expected = expected or "a folder written by Dataset.save_to_disk"
    if path.is_dir() and not any(path.iterdir()):
        raise DataError(f"{label}: empty folder (expected {expected})")
    splits = _saved_splits(path)
    if splits is not None:  # a DatasetDict: an empty split cannot be loaded with the others
        empty = [name for name in splits if _saved_empty(path / name)]
        if split is not None and split in splits and split not in empty:
            return datasets.DatasetDict({split: datasets.load_from_disk(str(path / split))})
        if empty:
            raise DataError(f"{label}: split {empty[0]!r} holds no rows" +
                            (f"; choose another split (available: {', '.join(splits)})" if len(splits) > 1 else ""))
    elif _saved_empty(path):
        raise DataError(f"{label}: no rows (the dataset in the folder is empty)")
    try:
        return datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(f"{label}: not a dataset folder (expected {expected})") from None


def _saved_splits(path: Path) -> list[str] | None:
    try:
        return list(json.loads((path / "dataset_dict.json").read_text())["splits"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _saved_empty(path: Path) -> bool:
    try:
        return json.loads((path / "state.json").read_text())["_data_files"] == []
    except (OSError, ValueError, KeyError, TypeError):
        return False


# --------------------------------------------------------------------------------------------- the Hub

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_offline() -> str | None:
    """The variable that puts the Hub clients in offline mode (``HF_HUB_OFFLINE=1``), or None when online."""
    import datasets
    from huggingface_hub import constants

    if not (constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE):
        return None
    return next((f"{v}={os.environ[v]}" for v in _OFFLINE_VARS if os.environ.get(v)), "HF_HUB_OFFLINE=1")


def _network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub and datasets raise when the Hub cannot be reached (any HTTP client they use)."""
    import importlib

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled is a ConnectionError
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)  # connect, timeout, network, proxy errors
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:
        pass
    return tuple(errors)


def load_hub_dataset(repo_id: str, split: str):
    """One split of a Hub dataset through `datasets.load_dataset`; what cannot be had is a one-line `DataError`.

    Offline (``HF_HUB_OFFLINE=1``) the local cache answers, in well under a second either way. Online, one metadata
    request goes first (no retries; huggingface_hub's own ``HF_HUB_ETAG_TIMEOUT``, 10 s by default, bounds it): a
    Hub that cannot be reached fails there at once, instead of huggingface_hub's ~25 s of retries inside
    load_dataset, and a dataset that does not exist is told as such.
    """
    import datasets
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    from .errors import DataError

    network = _network_errors()
    offline = hub_offline()
    not_found = (f"no dataset {repo_id} on the Hugging Face Hub ({constants.ENDPOINT}), or it is private or gated: "
                 f"check the id, log in (hf auth login, or set HF_TOKEN), or set a local file or folder")
    if not offline:
        try:
            HfApi().dataset_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        except RepositoryNotFoundError:
            raise DataError(not_found) from None
        except network as e:
            raise DataError(_unreachable(repo_id, e)) from None
        except HfHubHTTPError as e:  # the Hub (or a proxy in front of it) answered an error
            raise DataError(f"Hub dataset {repo_id}: the Hub answered {_one_line(e)}; try again later, or set a "
                            f"local file or folder") from None
    try:
        return datasets.load_dataset(repo_id, split=split)
    except network as e:
        if offline:
            raise DataError(f"Hub dataset {repo_id} is not in the local cache, and {offline} keeps the Hub from "
                            f"being asked: load it once where the Hub can be reached (unset {offline.split('=')[0]}), "
                            f"or set a local file or folder") from None
        raise DataError(_unreachable(repo_id, e)) from None
    except datasets.exceptions.DatasetNotFoundError as e:
        raise DataError(f"Hub dataset {repo_id}: {_one_line(e)}; check the id, or set a local file or folder") \
            from None
    except (FileNotFoundError, ValueError, OSError) as e:  # no data files, an unknown split, an HTTP error
        raise DataError(f"Hub dataset {repo_id}: {type(e).__name__}: {_one_line(e)}") from None


def _unreachable(repo_id: str, e: BaseException) -> str:
    return (f"cannot reach the Hugging Face Hub ({constants_endpoint()}) to load {repo_id} ({type(e).__name__}: "
            f"{_one_line(e)}): prepare the data where the Hub can be reached and set a local file or folder, or set "
            f"HF_HUB_OFFLINE=1 to use a copy already in the local cache")


def constants_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def weights_id(model: str) -> str | None:
    """Names, sizes and times of a local model's weight files: a model retrained in place is a new model."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None  # a Hub id or a served name: its revision identifies it
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    blob = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
