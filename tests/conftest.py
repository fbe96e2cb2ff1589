"""Test-session settings.

The models under test are tiny: one intra-op thread is fastest for them, and it keeps the suite
from oversubscribing the cores when several processes run at once (the 2-rank gloo tests spawn
workers, which inherit the environment variable).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests, restored after (``pytestmark = usefixtures("one_thread")``).

    On two shared cores intra-op threads fight over them and make every HVP many times slower; a test that
    changes the thread count must not leak it into the rest of the module.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
