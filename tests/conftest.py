import os

import pytest
import torch

# Under pytest-xdist each worker gets one torch thread: two workers with two threads each on a 2-core machine
# oversubscribe it and small ops stall.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
