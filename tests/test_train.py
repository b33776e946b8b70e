"""`evolkit train`: two steps of LoRA and of full fine-tuning on the tiny random model, the saved
model loads in `evolkit eval`, a finished run is not trained again, and a run killed with
SIGKILL after a checkpoint resumes from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from evolkit.errors import ConfigMismatchError, EvolkitError
from evolkit.train import last_checkpoint, train, training_rows


def rows(n: int = 12) -> list[dict[str, Any]]:
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return [
        {"instruction": f"Spell the digit {i % 10}.", "input": "", "output": f"{words[i % 10]}"}
        for i in range(n)
    ]


def write_rows(path: Path, n: int = 12) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(n)), encoding="utf-8")
    return path


FAST: dict[str, Any] = {
    "max_steps": 2,
    "batch_size": 2,
    "device_batch": 2,
    "max_length": 64,
    "logging_steps": 5,  # steps 1 and 2 are logged all the same: the first and the last
    "progress": False,
}


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def changed(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    import torch

    return [k for k in a if k in b and not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_two_steps_save_a_whole_model_that_eval_loads(
    tmp_path: Path, tiny_model_dir: Path, lora: bool
) -> None:
    data = write_rows(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    s = train(data, out, base=str(tiny_model_dir), lora=lora, **FAST)
    assert s["finished"] and s["steps"] == 2 and s["rows"] == 12
    assert s["method"] == ("lora" if lora else "full")
    assert [x["step"] for x in s["losses"]] == [1, 2]
    assert s["last_loss"] == s["losses"][-1]["loss"]
    model = out / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "train_config.json"} <= names
    assert "adapter_config.json" not in names  # LoRA is merged: a plain model folder
    assert not (out / "checkpoints").exists()  # removed once the model is saved
    cfg = json.loads((model / "train_config.json").read_text())
    assert cfg["settings"]["lora"] is lora and cfg["steps"] == 2 and cfg["merged_lora"] is lora
    assert cfg["inputs"]["rows"] == 12 and cfg["dtype"] == "float32"
    # Training moved the weights away from the base model's.
    assert changed(weights(tiny_model_dir), weights(model))
    # The run folder loads in `evolkit eval` (its model/ is evaluated).
    from evolkit.evaluate import evaluate

    e = evaluate(str(out), tmp_path / "eval", limit=1, max_new_tokens=4, progress=False)
    assert e["prompts"] == 1 and e["model_arg"] == str(model)


def test_a_finished_run_is_not_trained_again_and_other_settings_are_refused(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = write_rows(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    first = train(data, out, base=str(tiny_model_dir), **FAST)
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    again = train(data, out, base=str(tiny_model_dir), **FAST)
    assert again == first
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigMismatchError, match="lr"):
        train(data, out, base=str(tiny_model_dir), lr=1e-3, **FAST)
    # Other rows are another run too (the fingerprint covers a digest of the rows).
    write_rows(data, 10)
    with pytest.raises(ConfigMismatchError, match="rows"):
        train(data, out, base=str(tiny_model_dir), **FAST)


def test_rows_that_cannot_be_trained_on_are_one_clear_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    empty = [{"instruction": "No answer here.", "output": ""}]
    with pytest.raises(EvolkitError, match="no rows to train on"):
        train(empty, tmp_path / "a", base=str(tiny_model_dir), **FAST)
    with pytest.raises(EvolkitError, match="not a Hugging Face model folder"):
        train(rows(), tmp_path / "b", base=str(tmp_path), **FAST)
    got, counts = training_rows([*rows(3), *empty], limit=2)
    assert len(got) == 2 and counts == {"read": 4, "bad": 0, "not_trainable": 1}
    # prompt-completion rows: the loss is on the completion only
    assert got[0]["prompt"] == [{"role": "user", "content": "Spell the digit 0."}]
    assert got[0]["completion"] == [{"role": "assistant", "content": "zero"}]


KILLED_RUN = """
import sys, time
from transformers import TrainerCallback
from evolkit.train import train

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(0.4)

data, out, base = sys.argv[1:4]
train(data, out, base=base, max_steps=8, save_steps=1, batch_size=2, device_batch=2,
      max_length=64, logging_steps=1, progress=False, callbacks=[Slow()])
"""


def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = write_rows(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(data), str(out), str(tiny_model_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ready = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists()
    kept = last_checkpoint(out / "checkpoints")
    assert kept is not None and int(kept.name.split("-")[1]) >= 2
    # A save torn by the kill (no trainer state yet) is never resumed from.
    torn = out / "checkpoints" / "checkpoint-99"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")

    # The same command again: same settings, no slow callback.
    s = train(
        data,
        out,
        base=str(tiny_model_dir),
        max_steps=8,
        save_steps=1,
        batch_size=2,
        device_batch=2,
        max_length=64,
        logging_steps=1,
        progress=False,
    )
    assert not torn.exists()
    resumed = int(s["resumed_from"].split("-")[1])
    assert resumed >= 2 and s["steps"] == 8
    # The log history came back with the checkpoint: losses of the killed run's steps too.
    assert [x["step"] for x in s["losses"]] == list(range(1, 9))
    assert (out / "model" / "model.safetensors").is_file()
    log = (out / "run.log").read_text()
    assert f"resuming from {out / 'checkpoints' / s['resumed_from']}" in log
    assert "train: step 8/8 (100%), loss" in log


def test_cli_trains_and_prints_where_the_model_is(tmp_path: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from evolkit.cli import app

    data = write_rows(tmp_path / "data.jsonl")
    args = ["train", str(data), "-o", str(tmp_path / "m"), "--base", str(tiny_model_dir)]
    res = CliRunner().invoke(
        app, [*args, "--full", "--max-steps", "1", "--batch-size", "2", "--max-length", "64"]
    )
    assert res.exit_code == 0, res.output
    assert "trained full on 12 rows: 1 steps" in res.output
    assert str(tmp_path / "m" / "model") in res.output
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["command"] == "train" and cfg["settings"]["lora"] is False
