import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Timing tests run on one intra-op thread: on a loaded 2-core machine a second OpenMP thread turns each tiny
    op into a multi-millisecond wait, which would be noise larger than the delays the tests inject."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
