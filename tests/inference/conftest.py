import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The generation tests run thousands of tiny ops; on a loaded 2-core CI machine intra-op threads only add
    contention (10x slower measured), so these tests run single-threaded and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
