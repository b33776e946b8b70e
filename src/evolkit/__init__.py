"""evolkit: evolve instruction-tuning data with small language models, and measure what it made.

The Python API (`evolkit.evolve`, `evolkit.score`, `evolkit.autoif`, `evolkit.analyze`,
`evolkit.auto_evol`, `evolkit.RunResult`) lives in `evolkit.api` and is imported on first use,
so ``import evolkit`` loads neither torch nor the scenarios.
"""

import os
from typing import Any

# PyTorch's OpenMP threads spin while they wait for each other; when anything else shares the
# cores (a laptop, CI, two evolkit processes) a 2-thread forward pass then ran 3-8x slower here.
# Passive waiting costs nothing measurable on an idle machine. Set before torch is imported;
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_API = ("evolve", "score", "autoif", "analyze", "auto_evol", "RunResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from evolkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'evolkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
