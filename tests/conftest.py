"""Shared fixtures: the embedded model folder and a tiny randomly initialised model.

The tiny model reuses the embedded model's tokenizer (so chat templates and special tokens are
real) with a 2-layer, 32-wide random network: mechanics tests run in milliseconds per call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Tests share the per-user model cache (the embedded model converts once per machine) unless
# EVOLKIT_CACHE_DIR is set; they never download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    pytest.importorskip("torch")
    from evolkit.models.embedded import embedded_model_dir

    return embedded_model_dir()


def save_tiny_model(
    out: Path,
    tokenizer_dir: Path,
    config_class: Any = None,
    model_class: Any = None,
    shape: Callable[[Any, Any], None] | None = None,
    **config: Any,
) -> Path:
    """A 2-layer, 32-wide random model with the embedded model's tokenizer, saved in `out`.

    `config` overrides the defaults (a Llama by default: `config_class` and `model_class` pick
    another family);
    `shape(model, tokenizer)` may edit the weights before saving. Seeded: the same every time.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    settings: dict[str, Any] = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": True,
        **config,
    }
    torch.manual_seed(0)
    model = (model_class or LlamaForCausalLM)((config_class or LlamaConfig)(**settings))
    model = model.to(torch.float32)
    if shape is not None:
        with torch.no_grad():
            shape(model, tok)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), embedded_dir)
