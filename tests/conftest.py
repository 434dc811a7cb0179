import pytest
import torch

# Two cores: one intra-op thread per test process keeps pytest-xdist workers from fighting.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
