"""Supervised fine-tuning on evolkit data: `train(data, out)` with TRL's `SFTTrainer`.

The rows are TRL's conversational prompt-completion rows (`evolkit.io.exports.
prompt_completion_rows`), so the loss counts the response tokens only. The run folder OUT
holds:

- `model/`: the trained model as a plain Hugging Face folder, with its tokenizer and
  `train_config.json` (every setting, the data and the base model). A LoRA run saves the
  adapters *merged* into the base weights: any tool loads the result like any other model
  (`evolkit eval OUT`, vLLM, transformers) without peft or the base folder. It is written
  under a temporary name and renamed when complete, so a folder named `model/` is whole.
- `checkpoints/`: Trainer checkpoints every `save_steps` steps while training runs; a run
  killed (even with -9) resumes from the last complete one. Removed once `model/` is saved.
- `config.json`, `summary.json`, `run.log`, as every run folder.

Defaults are sized for a laptop: LoRA r16 on the embedded SmolLM2-135M, 256 tokens a row,
fp32 on CPU (bf16 on a GPU that has it), gradient checkpointing off (about 15% faster on CPU).
Several GPUs: one process uses them all through DataParallel; `accelerate launch -m evolkit
train ...` runs one process per GPU (the main process alone writes the run folder).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolkit.config import Settings, opt
from evolkit.errors import EvolkitError
from evolkit.io.exports import prompt_completion_rows
from evolkit.io.writers import atomic_path, atomic_write_json
from evolkit.progress import format_duration
from evolkit.records import Record
from evolkit.runs import (
    CHECKPOINTS_DIR,
    CONFIG,
    EVOLVED,
    MODEL_DIR,
    SCORED,
    SELECTED,
    SUMMARY,
    TRAIN_CONFIG,
    RunFolder,
)
from evolkit.scenarios.runner import ON_BAD

log = logging.getLogger("evolkit.progress")

TRAIN_DTYPES = ("auto", "float32", "bfloat16")
SCHEDULERS = ("cosine", "linear", "constant_with_warmup")
#: The study's full fine-tuning rate (SPEC section 9) and a usual LoRA rate.
FULL_LR = 2e-5
LORA_LR = 2e-4
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainSettings(Settings):
    """How a model is trained (shared by `train` and `train-eval`)."""

    base: str = opt("embedded", "Base model to fine-tune: 'embedded' or a model folder.")
    lora: bool = opt(
        True,
        "LoRA adapters (merged into the saved model) or full fine-tuning.",
        bool_flags="--lora/--full",
    )
    epochs: float = opt(1.0, "Passes over the rows.")
    lr: float | None = opt(
        None, f"Peak learning rate (default: {LORA_LR:g} with LoRA, {FULL_LR:g} full)."
    )
    max_length: int = opt(256, "Tokens per row (prompt + response); longer rows are cut.")
    batch_size: int = opt(8, "Rows per optimizer step (all devices together).")
    device_batch: int = opt(
        8,
        "Rows per forward pass on one device; gradients add up to --batch-size.",
        fingerprint=False,
    )
    max_steps: int | None = opt(None, "Stop after N optimizer steps (overrides --epochs).")
    lora_r: int = opt(16, "LoRA rank.")
    lora_alpha: int = opt(32, "LoRA alpha (the update is scaled by alpha / r).")
    scheduler: str = opt("cosine", "Learning-rate schedule.", choices=SCHEDULERS)
    warmup_ratio: float = opt(0.03, "Share of the steps spent warming the learning rate up.")
    seed: int = opt(0, "Seed of the initialisation, data order and dropout.")
    dtype: str = opt(
        "auto",
        "Weights: auto is bf16 on a GPU that has it, float32 elsewhere.",
        choices=TRAIN_DTYPES,
    )
    save_steps: int = opt(
        20, "Checkpoint every N steps (a killed run resumes from the last).", fingerprint=False
    )
    logging_steps: int = opt(5, "A progress line (with the loss) every N steps.", fingerprint=False)
    gradient_checkpointing: bool = opt(
        False, "Recompute activations: less memory, slower.", fingerprint=False
    )

    def check(self) -> None:
        super().check()
        positive = {
            "epochs": self.epochs,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "device_batch": self.device_batch,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "save_steps": self.save_steps,
            "logging_steps": self.logging_steps,
        }
        for name, value in positive.items():
            if not value > 0:
                raise EvolkitError(f"{name} must be positive, not {value}")
        if self.lr is not None and not self.lr > 0:
            raise EvolkitError(f"lr must be positive, not {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise EvolkitError(f"max_steps must be at least 1, not {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise EvolkitError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (LORA_LR if self.lora else FULL_LR)

    def train_settings(self) -> dict[str, Any]:
        """Only the TrainSettings fields (a subclass adds its own)."""
        from evolkit.config import options

        names = {f.name for f, _ in options(TrainSettings)}
        return {k: v for k, v in self.to_dict().items() if k in names}


@dataclass
class TrainConfig(TrainSettings):
    """`evolkit train`."""

    limit: int | None = opt(None, "Train on only the first N trainable rows.")
    on_bad_record: str = opt(
        "error",
        "A malformed input row: error stops; skip leaves it out (counted in the summary).",
        choices=ON_BAD,
    )
    overwrite: bool = opt(
        False,
        "Start over in OUT (only evolkit's own files are removed).",
        fingerprint=False,
    )
    progress: bool = opt(True, "Show progress.", fingerprint=False, cli=False)

    def check(self) -> None:
        super().check()
        if self.limit is not None and self.limit < 1:
            raise EvolkitError("limit must be at least 1")


# -- data -----------------------------------------------------------------------------------
def data_file(source: str | Path) -> Path:
    """A run folder stands for its rows file (evolved, selected or scored rows)."""
    p = Path(source)
    if p.is_dir() and not (p / "state.json").exists() and not (p / "dataset_dict.json").exists():
        found = [p / n for n in (EVOLVED, SELECTED, SCORED) if (p / n).exists()]
        if not found:
            raise EvolkitError(
                f"{p}: no {EVOLVED}, {SELECTED} or {SCORED} here: give a run folder or a data "
                "file (an export, or any format evolkit reads)"
            )
        return found[0]
    return p


def training_rows(
    source: Any, *, limit: int | None = None, on_bad: str = "error"
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Prompt-completion rows of the kept rows with a response, and what was left out."""
    from evolkit.io.readers import BadRow, read_records, records_from_rows

    bad: list[BadRow] = []
    records: list[Record]
    if isinstance(source, str | Path):
        records = list(read_records(data_file(source), on_bad=on_bad, bad_sink=bad.append))  # type: ignore[arg-type]
    else:
        records = records_from_rows(source, on_bad=on_bad, bad_sink=bad.append)  # type: ignore[arg-type]
    rows = prompt_completion_rows(records)
    counts = {"read": len(records), "bad": len(bad), "not_trainable": len(records) - len(rows)}
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        where = source if isinstance(source, str | Path) else "the rows given"
        raise EvolkitError(
            f"{where}: no rows to train on ({counts['read']} read, {counts['bad']} malformed, "
            f"{counts['not_trainable']} rejected or without a response)"
        )
    return rows, counts


def rows_digest(rows: Sequence[Mapping[str, Any]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def base_model(base: str) -> tuple[str, dict[str, Any]]:
    """(the folder to load, what the fingerprint records about the base model)."""
    from evolkit.models.embedded import EMBEDDED_ALIASES

    if base in EMBEDDED_ALIASES:
        from evolkit.models.embedded import embedded_model_dir

        return str(embedded_model_dir()), {"base": "embedded"}
    path = Path(base).expanduser()
    if (path / CONFIG).is_file() and (path / MODEL_DIR / CONFIG).is_file():
        path = path / MODEL_DIR  # a train run folder: continue from the model it wrote
    if not (path / CONFIG).is_file():
        raise EvolkitError(
            f"--base {base}: not a Hugging Face model folder (no config.json); give a local "
            "folder or 'embedded' (nothing is downloaded)"
        )
    from evolkit.models.identity import model_fingerprint

    return str(path), {"base": str(path.resolve()), "base_weights": model_fingerprint(path)}


# -- checkpoints ----------------------------------------------------------------------------
def last_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last);
    newer, torn ones (a kill during a save) are removed so the Trainer never meets them."""
    if not folder.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return path
        except (OSError, ValueError):
            log.warning(
                "%s: an incomplete checkpoint (a run stopped while saving it): removed", path
            )
            shutil.rmtree(path, ignore_errors=True)
    return None


# -- progress -------------------------------------------------------------------------------
def _progress_callback() -> Any:
    from transformers import TrainerCallback

    class ProgressLines(TrainerCallback):  # type: ignore[misc]
        """One plain line per logging step: step, loss, learning rate, speed, time left."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.first = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.monotonic()
            self.first = state.global_step
            if state.is_world_process_zero:
                done = f" ({state.global_step} done by an earlier run)" if state.global_step else ""
                log.info("train: %d steps%s", state.max_steps, done)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            # The last step is always logged: its loss is the summary's last loss.
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            step, total = state.global_step, max(state.max_steps, 1)
            elapsed = max(time.monotonic() - self.t0, 1e-9)
            rate = (step - self.first) / elapsed
            left = (total - step) / rate if rate > 0 else None
            when = (
                f"ETA {format_duration(left)}"
                if step < total and left is not None
                else f"{format_duration(elapsed)} so far"
            )
            log.info(
                "train: step %d/%d (%d%%), loss %.4f, lr %.2e, %.2f steps/s, %s",
                step,
                total,
                round(100 * step / total),
                float(logs["loss"]),
                float(logs.get("learning_rate", 0.0)),
                rate,
                when,
            )

    return ProgressLines()


# -- training -------------------------------------------------------------------------------
def _dtype(name: str) -> tuple[Any, bool]:
    """(torch dtype to load the weights in, whether Trainer runs bf16 autocast)."""
    import torch

    cuda = torch.cuda.is_available()
    if name == "auto":
        name = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    dtype = getattr(torch, name)
    return dtype, bool(cuda and dtype == torch.bfloat16)


def _batching(cfg: TrainSettings, processes: int) -> tuple[int, int, int]:
    """(rows per device per pass, accumulation steps, devices), adding up to --batch-size."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # One process sees every GPU (DataParallel); under accelerate/torchrun each has one.
    devices = processes if processes > 1 else max(1, gpus)
    per_device = min(cfg.device_batch, max(1, cfg.batch_size // devices))
    step_rows = per_device * devices
    if cfg.batch_size % step_rows:
        raise EvolkitError(
            f"batch_size {cfg.batch_size} is not a multiple of {step_rows} "
            f"({per_device} rows per pass x {devices} device(s)); pick a batch size that is"
        )
    return per_device, cfg.batch_size // step_rows, devices


def train(
    data: Any,
    out: str | Path,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    callbacks: Sequence[Any] = (),
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune `base` on `data` (a run folder, a data file or rows in memory) into OUT (see
    the module docstring); return the summary. A finished run is not trained again: its
    summary is returned. `callbacks`: extra transformers `TrainerCallback`s."""
    cfg = TrainConfig.make(config, **settings)
    t_start = time.perf_counter()
    rows, counts = training_rows(data, limit=cfg.limit, on_bad=cfg.on_bad_record)
    base_path, base_info = base_model(cfg.base)
    source = str(data_file(data).resolve()) if isinstance(data, str | Path) else "in memory"
    inputs = {"data": source, "rows": len(rows), "rows_digest": rows_digest(rows), **base_info}
    out = Path(out)
    try:
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import trl  # noqa: F401
        from accelerate import PartialState
    except ImportError as exc:
        raise EvolkitError(
            f"training needs '{exc.name}': pip install 'evolkit[local,train]'"
        ) from None

    state = PartialState()
    folder: RunFolder | None = None
    try:
        if state.is_main_process:
            folder = RunFolder(
                out,
                {**cfg.fingerprint_dict(), **inputs},
                overwrite=cfg.overwrite,
                command="train",
                settings={**cfg.to_dict(), "inputs": {"data": source, "base": cfg.base}},
            )
        state.wait_for_everyone()  # the folder is open (and cleaned with --overwrite)
        done = _finished(out)
        if done is not None:
            log.info("train: %s already holds the trained model; nothing to do", out)
            if state.is_main_process:  # left by a stop between the summary and the cleanup
                shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
            return done
        from evolkit.console import log_file

        logged = log_file(folder.log_path) if folder is not None else contextlib.nullcontext()
        with logged:
            return _train(cfg, rows, counts, base_path, inputs, out, state, callbacks, t_start)
    finally:
        if folder is not None:
            folder.close()


def _finished(out: Path) -> dict[str, Any] | None:
    path = out / SUMMARY
    if not (out / MODEL_DIR / TRAIN_CONFIG).is_file() or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and summary.get("finished") else None


def _train(
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    counts: dict[str, int],
    base_path: str,
    inputs: dict[str, Any],
    out: Path,
    state: Any,
    callbacks: Sequence[Any],
    t_start: float,
) -> dict[str, Any]:
    import datasets

    from evolkit.models.local import quiet_transformers

    quiet_transformers()
    datasets.disable_progress_bars()
    with warnings.catch_warnings():
        # Deprecation notices between transformers and TRL versions (an argument TRL still
        # sets under its old name), and pin_memory without a GPU: nothing a user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        return _fit(cfg, rows, counts, base_path, inputs, out, state, callbacks, t_start)


def _fit(
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    counts: dict[str, int],
    base_path: str,
    inputs: dict[str, Any],
    out: Path,
    state: Any,
    callbacks: Sequence[Any],
    t_start: float,
) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    dtype, bf16 = _dtype(cfg.dtype)
    per_device, accumulation, devices = _batching(cfg, state.num_processes)
    checkpoints = out / CHECKPOINTS_DIR
    if state.is_main_process:
        last_checkpoint(checkpoints)  # removes torn checkpoints
    state.wait_for_everyone()  # torn checkpoints are gone before the others look
    resume = last_checkpoint(checkpoints)
    if resume is not None:
        log.info("train: resuming from %s", resume)

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    args = SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        learning_rate=cfg.learning_rate(),
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # below 1: a share of the steps (transformers 5)
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,  # a first loss even in runs shorter than a logging step
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_progress_callback(), *callbacks],
    )
    # Our callback writes the progress lines; these would print dicts and draw a tqdm bar.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    t_train = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.perf_counter() - t_train
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}

    losses = [
        {"step": e["step"], "loss": round(float(e["loss"]), 6)}
        for e in trainer.state.log_history
        if "loss" in e
    ]
    device = str(trainer.args.device)
    train_config = {
        "settings": cfg.train_settings(),
        "learning_rate": cfg.learning_rate(),
        "inputs": inputs,
        "merged_lora": cfg.lora,
        "dtype": str(dtype).removeprefix("torch."),
        "bf16_autocast": bf16,
        "device": device,
        "devices": devices,
        "per_device_batch": per_device,
        "gradient_accumulation": accumulation,
        "steps": trainer.state.global_step,
        "trl": _version("trl"),
        "peft": _version("peft") if cfg.lora else None,
        "transformers": _version("transformers"),
        "torch": torch.__version__,
    }
    t_save = time.perf_counter()
    _save_model(trainer, tokenizer, cfg.lora, out / MODEL_DIR, train_config)
    save_seconds = time.perf_counter() - t_save
    summary = {
        "finished": True,
        "rows": len(rows),
        "input": counts,
        "base": inputs.get("base"),
        "method": "lora" if cfg.lora else "full",
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "train_loss": round(float(result.training_loss), 6)
        if math.isfinite(result.training_loss)
        else None,
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
        "losses": losses,
        "resumed_from": resume.name if resume else None,
        "device": device,
        "dtype": train_config["dtype"],
        "seconds": {
            "train": round(train_seconds, 2),
            "save": round(save_seconds, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
        "outputs": {"model": str(out / MODEL_DIR), "summary": str(out / SUMMARY)},
    }
    atomic_write_json(out / SUMMARY, summary)
    # Only now: a stop before the summary is written resumes from the checkpoints.
    shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
    log.info(
        "train: %d steps on %d rows in %s, loss %s -> %s",
        summary["steps"],
        len(rows),
        format_duration(train_seconds),
        summary["first_loss"],
        summary["last_loss"],
    )
    return summary


def _save_model(
    trainer: Any, tokenizer: Any, lora: bool, dest: Path, train_config: dict[str, Any]
) -> None:
    model = trainer.model
    if lora:
        # Merged: the result loads anywhere as a plain model, without peft or the base folder.
        model = model.merge_and_unload()
    with atomic_path(dest, is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / TRAIN_CONFIG, train_config)


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
