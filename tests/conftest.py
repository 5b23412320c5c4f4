import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Each test starts from the same global torch seed and default dtype."""
    torch.manual_seed(0)
    yield
