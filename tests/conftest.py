import os

import pytest
import torch
from hypothesis import settings

# CI runs every hypothesis test with a fixed sequence of examples, so a result never depends on the draw.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# One torch thread per test process: the tests use small tensors, and two xdist workers with two threads each on
# a 2-core machine oversubscribe it so that small ops stall.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
