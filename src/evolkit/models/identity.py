"""Which model a local folder holds, as a short fingerprint the call cache can key by.

A folder's name says nothing about its weights: `a/final` and `b/final` are different models,
and a checkpoint retrained in place keeps its path. The fingerprint therefore covers what
decides a model's outputs: the config, generation and tokenizer files (hashed in full) and the
weight files (their size, modification time and a sample of their bytes). Hashing every byte of
a multi-gigabyte checkpoint would cost longer than many runs, so a weight file contributes its
first and last MiB (the safetensors header with every tensor's offsets, the first and last
tensors) plus a few blocks spread through the middle. The modification time is included too:
a file rewritten in place changes it even when the sampled bytes happen not to change (a
fine-tune that froze the embeddings), and a copy that loses it only costs cache misses.

Fingerprints are remembered in the evolkit cache folder (`fingerprints.json`), keyed by the
folder's resolved path and valid while every file's size, modification time, inode and status
change time stay the same, so a 15 GB model is sampled once, not on every run. Nothing is ever
written into the model's own folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from evolkit.errors import EvolkitError
from evolkit.io.writers import atomic_write_json

#: Files whose every byte can change what the model writes, hashed in full (configs, tokenizer
#: vocabularies and merges, chat templates, shard indexes). Other files (README, images,
#: training logs other than JSON) are ignored: they change nothing the backend loads.
FULL_HASH_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken")
#: Weight files, sampled (see the module docstring).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")

EDGE_BYTES = 1 << 20  # the first and the last MiB of a weight file
MIDDLE_BLOCKS = 8  # blocks read between them
MIDDLE_BYTES = 64 << 10

STORE_NAME = "fingerprints.json"
_STORE_VERSION = 1


def _relevant_files(folder: Path) -> list[Path]:
    """The folder's files that define the model, in a stable order (top level only: that is
    all `from_pretrained` reads from a local folder)."""
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith(FULL_HASH_SUFFIXES + WEIGHT_SUFFIXES)
    ]
    return sorted(files, key=lambda p: p.name)


def _stat_signature(files: list[Path]) -> list[list[Any]]:
    """What must stay the same for a stored fingerprint to be reused. Besides size and
    modification time it holds the inode and the status-change time, which no tool can set
    back: a file rewritten with its old modification time restored (`cp -p`, `rsync -t`) is
    still hashed again."""
    signature: list[list[Any]] = []
    for p in files:
        st = p.stat()
        signature.append([p.name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns])
    return signature


def _digest_file(path: Path, size: int) -> str:
    """Hash of a file's content: all of it for a config or tokenizer file, a sample of it for
    a weight file larger than two edge blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        if not path.name.lower().endswith(WEIGHT_SUFFIXES) or size <= 2 * EDGE_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(f.read(EDGE_BYTES))
        span = size - 2 * EDGE_BYTES
        for i in range(1, MIDDLE_BLOCKS + 1):
            f.seek(EDGE_BYTES + span * i // (MIDDLE_BLOCKS + 1))
            h.update(f.read(MIDDLE_BYTES))
        f.seek(size - EDGE_BYTES)
        h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def _compute(files: list[Path], signature: list[list[Any]]) -> str:
    h = hashlib.sha256(b"evolkit-model-fingerprint-v1\0")
    for p, (name, size, mtime_ns, *_) in zip(files, signature, strict=True):
        h.update(f"{name}\0{size}\0{mtime_ns}\0{_digest_file(p, size)}\0".encode())
    return h.hexdigest()[:16]


def _store_path() -> Path:
    from evolkit.models.embedded import cache_root

    return cache_root() / STORE_NAME


def _load_store(path: Path) -> dict[str, Any]:
    """The remembered fingerprints; an unreadable store is only a lost cache, never an error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _STORE_VERSION:
        return {}
    entries = data.get("folders")
    return entries if isinstance(entries, dict) else {}


def _save_store(path: Path, entries: dict[str, Any]) -> None:
    """Write the store atomically (two runs starting at once must not leave half a file).
    A store that cannot be written (read-only cache folder) only means hashing again later."""
    # Forget folders that no longer exist, so the store does not grow with every deleted
    # checkpoint.
    kept = {k: v for k, v in entries.items() if Path(k).is_dir()}
    with contextlib.suppress(OSError):
        atomic_write_json(path, {"version": _STORE_VERSION, "folders": kept})


def model_fingerprint(path: str | Path) -> str:
    """A 16-hex-digit fingerprint of the model in the folder `path` (see the module docstring).

    Reused from the store while the files' names, sizes and times are unchanged; computed (and
    stored) otherwise.
    """
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise EvolkitError(f"{path}: not a model folder, cannot fingerprint it")
    try:
        files = _relevant_files(folder)
        signature = _stat_signature(files)
    except OSError as exc:
        raise EvolkitError(f"{folder}: cannot read the model folder ({exc})") from exc
    store_path = _store_path()
    entries = _load_store(store_path)
    known = entries.get(str(folder))
    if (
        isinstance(known, dict)
        and known.get("files") == signature
        and isinstance(known.get("fingerprint"), str)
    ):
        return str(known["fingerprint"])
    try:
        fingerprint = _compute(files, signature)
    except OSError as exc:
        raise EvolkitError(f"{folder}: cannot read a model file to fingerprint it ({exc})") from exc
    # Read again just before writing: another process may have stored other folders meanwhile.
    entries = _load_store(store_path)
    entries[str(folder)] = {"files": signature, "fingerprint": fingerprint}
    _save_store(store_path, entries)
    return fingerprint


def local_cache_id(model_id: str, path: str | Path) -> str:
    """The call-cache identity of a locally loaded model: `model_id@fingerprint` for a folder.

    A hub id that is not a local folder keeps its id: its files live in the hub's own cache,
    whose revision the id does not pin.
    """
    if not Path(path).expanduser().is_dir():
        return model_id
    return f"{model_id}@{model_fingerprint(path)}"
