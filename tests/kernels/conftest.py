import pytest

from support import poisoned_memory


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    """Every kernel test runs with uninitialized memory filled with NaN (see poisoned_memory)."""
    with poisoned_memory():
        yield
