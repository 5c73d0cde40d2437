import pytest
import torch

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
