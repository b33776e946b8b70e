"""evolkit: evolve instruction-tuning data with small language models, and measure what it made."""

import os

# PyTorch's OpenMP threads spin while they wait for each other; when anything else shares the
# cores (a laptop, CI, two evolkit processes) a 2-thread forward pass then ran 3-8x slower here.
# Passive waiting costs nothing measurable on an idle machine. Set before torch is imported;
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
