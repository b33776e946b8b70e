"""Each TRL export goes through the trainer that reads it, for two steps on the tiny model.

What is checked is that the files load as the trainers expect: the loss is finite and the
steps ran, and prompt-completion rows put the loss on the response alone (the messages export
trains on the user turn too). Two steps on a random 2-layer model say nothing about quality.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import evolkit
from evolkit.io.exports import export_dataset
from tests.test_autoif_preferences import Recorder, run_autoif
from tests.test_evolve import SEEDS, backends

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def evolved(tmp_path_factory: pytest.TempPathFactory) -> evolkit.RunResult:
    out = tmp_path_factory.mktemp("trl") / "evolve"
    rows = [{"instruction": s} for s in SEEDS]
    return evolkit.evolve(rows, out, backends=backends(), rounds=1, cache=None, progress=False)


@pytest.fixture(scope="module")
def autoif_run(tmp_path_factory: pytest.TempPathFactory) -> evolkit.RunResult:
    return run_autoif(tmp_path_factory.mktemp("trl") / "autoif", 2, Recorder())


def load(path: Path) -> Any:
    """How a user loads the export for TRL: the generic JSON loader."""
    return datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(path.parent / ".hf")
    )


def train(trainer_cls: Any, config_cls: Any, data: Any, model_dir: Path, out: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = config_cls(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        max_length=128,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir)),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
    )
    result = trainer.train()
    assert result.global_step == 2
    assert math.isfinite(result.training_loss)
    return trainer


def trained_text(trainer: Any) -> str:
    """The tokens of one batch that carry loss, as text."""
    batch = next(iter(trainer.get_train_dataloader()))
    tok = trainer.processing_class
    return " ".join(
        tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True)
    )


def test_sft_on_prompt_completion_learns_only_the_answer(
    evolved: evolkit.RunResult, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "pc.jsonl"
    export_dataset(evolved.rows(), path, "prompt-completion")
    trainer = train(trl.SFTTrainer, trl.SFTConfig, load(path), tiny_model_dir, tmp_path / "o")
    text = trained_text(trainer)
    assert "careful answer" in text  # the scripted response
    assert not any(s.rstrip(".") in text for s in SEEDS)  # never the instruction


def test_sft_on_messages(evolved: evolkit.RunResult, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    export_dataset(evolved.rows(), path, "messages")
    trainer = train(trl.SFTTrainer, trl.SFTConfig, load(path), tiny_model_dir, tmp_path / "o")
    # Without generation marks in the chat template the user turn is learned too: why the
    # prompt-completion export exists.
    assert any(s.rstrip(".") in trained_text(trainer) for s in SEEDS)


def test_kto_trainer_reads_the_kto_export(
    autoif_run: evolkit.RunResult, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "kto.jsonl"
    export_dataset(autoif_run.rows(), path, "kto", rejected=autoif_run.rejected())
    data = load(path)
    assert sorted(set(data["label"])) == [False, True]
    train(trl.KTOTrainer, trl.KTOConfig, data, tiny_model_dir, tmp_path / "o")


def test_dpo_trainer_reads_the_dpo_export(
    autoif_run: evolkit.RunResult, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "dpo.jsonl"
    export_dataset(autoif_run.rows(), path, "dpo", rejected=autoif_run.rejected())
    data = load(path)
    assert data.num_rows >= 1 and data.column_names == ["prompt", "chosen", "rejected"]
    train(trl.DPOTrainer, trl.DPOConfig, data, tiny_model_dir, tmp_path / "o")
