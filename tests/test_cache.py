"""The call cache never answers for another model, and says clearly when its file is broken."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evolkit.cache import CachedBackend, CallCache
from evolkit.errors import EvolkitError
from evolkit.models import identity
from evolkit.models.base import ChatRequest, Generation, SamplingParams
from evolkit.models.identity import local_cache_id, model_fingerprint
from tests.fakes import ScriptedBackend


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private evolkit cache folder (fingerprint store, default call cache) per test."""
    folder = tmp_path / "evolkit-cache"
    monkeypatch.setenv("EVOLKIT_CACHE_DIR", str(folder))
    return folder


def fake_model(folder: Path, weights: bytes, config: str = '{"hidden_size": 32}') -> Path:
    """A folder laid out like a saved model; fingerprinting reads files, not tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config)
    (folder / "tokenizer.json").write_text('{"vocab": {"a": 0}}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def weights(seed: int, size: int = 3 << 20) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def request(text: str = "Name a bird.") -> ChatRequest:
    return ChatRequest.of(
        [{"role": "user", "content": text}], SamplingParams(max_new_tokens=4, temperature=0.0)
    )


# -- model identity ----------------------------------------------------------------------------


def test_same_folder_name_different_weights_do_not_share_cache_entries(
    tiny_model_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from evolkit.models.local import LocalBackend

    a = tmp_path / "a" / "final"
    b = tmp_path / "b" / "final"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    torch.manual_seed(1)  # b holds another random model with the same architecture
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(b)).save_pretrained(b)

    cache = CallCache(tmp_path / "calls.sqlite")
    backend_a, backend_b = LocalBackend(str(a)), LocalBackend(str(b))
    assert backend_a.model_id == backend_b.model_id == "final"  # rows still record the name
    assert backend_a.cache_id != backend_b.cache_id
    assert backend_a.cache_id.startswith("final@")

    first = CachedBackend(backend_a, cache).generate([request()])
    again = CachedBackend(backend_a, cache).generate([request()])
    other = CachedBackend(backend_b, cache).generate([request()])
    assert not first[0].cached and again[0].cached
    assert not other[0].cached, "b/final was answered with a/final's cached generation"
    assert cache.per_model() == {backend_a.cache_id: 1, backend_b.cache_id: 1}
    cache.close()


def test_fingerprint_follows_weights_and_config_not_the_path(
    cache_dir: Path, tmp_path: Path
) -> None:
    a = fake_model(tmp_path / "a" / "final", weights(0))
    b = fake_model(tmp_path / "b" / "final", weights(1))
    fp_a = model_fingerprint(a)
    assert fp_a != model_fingerprint(b)

    st = (a / "model.safetensors").stat()
    # The same size and modification time, only the last bytes differ (a sampled region).
    changed = bytearray(weights(0))
    changed[-10:] = b"x" * 10
    (a / "model.safetensors").write_bytes(bytes(changed))
    os.utime(a / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    fp_tail = model_fingerprint(a)
    assert fp_tail != fp_a

    # A file rewritten with the very same bytes (a retrain that kept the sampled blocks) still
    # counts as another model: its modification time moved.
    os.utime(a / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fp_touched = model_fingerprint(a)
    assert fp_touched != fp_tail

    (a / "config.json").write_text('{"hidden_size": 64}')
    fp_config = model_fingerprint(a)
    assert fp_config != fp_touched

    (a / "README.md").write_text("notes that change no output")
    assert model_fingerprint(a) == fp_config


def test_fingerprint_is_stored_outside_the_model_folder_and_reused(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_model(tmp_path / "m", weights(0))
    reads: list[str] = []
    digest = identity._digest_file

    def counting(path: Path, size: int) -> str:
        reads.append(path.name)
        return digest(path, size)

    monkeypatch.setattr(identity, "_digest_file", counting)
    before = sorted(p.name for p in folder.iterdir())
    fp = model_fingerprint(folder)
    assert sorted(reads) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (cache_dir / identity.STORE_NAME).exists()

    reads.clear()
    assert model_fingerprint(folder) == fp
    assert reads == [], "an unchanged folder was hashed again"
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written into it

    (folder / "model.safetensors").touch()
    os.utime(folder / "model.safetensors", ns=(0, (folder / "config.json").stat().st_mtime_ns + 1))
    assert model_fingerprint(folder) != fp
    assert "model.safetensors" in reads


def test_a_corrupt_fingerprint_store_is_rebuilt(cache_dir: Path, tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "m", weights(0))
    fp = model_fingerprint(folder)
    (cache_dir / identity.STORE_NAME).write_text("{not json")
    assert model_fingerprint(folder) == fp


def test_hub_ids_keep_their_id_and_folders_get_a_fingerprint(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_cache_id("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct") == (
        "Qwen/Qwen2.5-0.5B-Instruct"
    )
    folder = fake_model(tmp_path / "ckpt", weights(0))
    assert local_cache_id("ckpt", folder) == f"ckpt@{model_fingerprint(folder)}"


# -- the cache file ----------------------------------------------------------------------------


def fill(path: Path, model: str = "m@1", n: int = 3) -> None:
    cache = CallCache(path)
    cache.put_many([(f"{model}-{i}", Generation(text=f"answer {i}")) for i in range(n)], model)
    cache.close()


def test_entries_record_the_model_they_answer_for(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "calls.sqlite")
    inner = ScriptedBackend(lambda r: "ok", model_id="srv")
    CachedBackend(inner, cache).generate([request("a"), request("b")])
    assert cache.per_model() == {"srv": 2}
    row = cache._db.execute("SELECT model, created FROM entries").fetchone()
    assert row[0] == "srv" and row[1] > 0
    cache.close()


def test_a_first_release_cache_file_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE calls (key TEXT PRIMARY KEY, value TEXT)")
    old.execute("INSERT INTO calls VALUES ('k', '{\"text\": \"from a folder name key\"}')")
    old.commit()
    old.close()

    cache = CallCache(path)
    assert len(cache) == 0 and cache.get_many(["k"]) == {}
    cache.put_many([("k2", Generation(text="new"))], model="m@1")
    assert cache.get_many(["k2"])["k2"].text == "new"
    cache.close()


@pytest.mark.parametrize("damage", ["not sqlite", "truncated", "empty table"])
def test_a_corrupt_cache_file_is_one_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "calls.sqlite"
    if damage == "not sqlite":
        path.write_text("these are someone's notes, not a database\n" * 100)
    else:
        fill(path, n=400)
        if damage == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
        else:
            db = sqlite3.connect(path)
            db.execute("DROP TABLE entries")
            db.commit()
            db.close()
    with pytest.raises(EvolkitError) as err:
        cache = CallCache(path)
        cache.get_many([f"m@1-{i}" for i in range(400)])
        cache.put_many([("k", Generation(text="x"))], model="m@1")
    message = str(err.value)
    assert str(path) in message and "--no-cache" in message and "evolkit cache clear" in message
    assert "\n" not in message


def test_a_locked_cache_file_is_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    fill(path)
    cache = CallCache(path, timeout=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of writing
    try:
        with pytest.raises(EvolkitError, match="locked") as err:
            cache.put_many([("k", Generation(text="x"))], model="m@1")
        assert str(path) in str(err.value) and "--no-cache" in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        cache.close()


def test_someone_elses_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    data = path.read_bytes()
    with pytest.raises(EvolkitError, match="did not write"):
        CallCache(path)
    assert path.read_bytes() == data


# -- evolkit cache info / clear ----------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    from evolkit.cli import app

    res = CliRunner().invoke(app, ["cache", *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        if isinstance(res.exception, EvolkitError):
            return 1, str(res.exception)
        raise res.exception
    return res.exit_code, res.output


def test_cache_info_lists_entries_per_model(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    fill(path, "final@aaaa", 2)
    fill(path, "final@bbbb", 3)
    code, out = cli("info", "--cache", str(path))
    assert code == 0
    assert str(path) in out and "entries: 5" in out
    assert "final@aaaa: 2" in out and "final@bbbb: 3" in out


def test_cache_info_uses_the_default_file(cache_dir: Path) -> None:
    fill(cache_dir / "calls.sqlite", "m@1", 1)
    code, out = cli("info")
    assert code == 0 and str(cache_dir / "calls.sqlite") in out and "m@1: 1" in out


def test_cache_clear_one_model_then_all(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    fill(path, "final@aaaa", 2)
    fill(path, "other@cccc", 3)
    code, out = cli("clear", "--cache", str(path), "--model", "final", "--yes")
    assert code == 0 and "removed 2 entries" in out
    cache = CallCache(path)
    assert cache.per_model() == {"other@cccc": 3}
    cache.close()
    code, out = cli("clear", "--cache", str(path), "--yes")
    assert code == 0 and "removed 3 entries" in out
    assert "entries: 0" in cli("info", "--cache", str(path))[1]


def test_cache_commands_on_a_corrupt_file_touch_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    path.write_bytes(b"\x00garbage" * 500)
    (tmp_path / "calls.sqlite-wal").write_bytes(b"stale")
    notes = tmp_path / "my_notes.txt"
    notes.write_text("keep me")
    other = tmp_path / "calls.sqlite.bak"
    other.write_text("a user's backup")

    code, out = cli("info", "--cache", str(path))
    assert code == 0 and "corrupt" in out
    code, msg = cli("clear", "--cache", str(path), "--model", "x", "--yes")
    assert code == 1 and "without --model" in msg and path.exists()

    code, out = cli("clear", "--cache", str(path), "--yes")
    assert code == 0
    assert not path.exists() and not (tmp_path / "calls.sqlite-wal").exists()
    assert notes.read_text() == "keep me" and other.read_text() == "a user's backup"


def test_cache_clear_refuses_a_database_evolkit_did_not_write(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    code, msg = cli("clear", "--cache", str(path), "--yes")
    assert code == 1 and "did not write" in msg and path.exists()


def test_a_run_on_a_corrupt_cache_stops_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a bird.", "input": ""}\n')
    bad = tmp_path / "calls.sqlite"
    bad.write_text("not a database " * 200)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EVOLKIT_CACHE_DIR": str(tmp_path / "c")}
    out = tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "evolkit",
            "evolve",
            str(seeds),
            "-o",
            str(out),
            "--cache",
            str(bad),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    text = " ".join(res.stderr.split())  # the console may wrap a long line
    assert str(bad) in text and "--no-cache" in text and "evolkit cache clear" in text
