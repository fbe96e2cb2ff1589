"""Test-session settings.

The models under test are tiny: one intra-op thread is fastest for them, and it keeps the suite
from oversubscribing the cores when several processes run at once (the 2-rank gloo tests spawn
workers, which inherit the environment variable).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
