import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and with another job on the cores every parallel
    region waits for a descheduled thread; restores the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
