import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reference():
    """``reference_fusion.py`` (next to this file): the fusion head before the fast path, frozen
    as the tests' reference (``reference_fuse``, ``regularizer``)."""
    path = Path(__file__).with_name("reference_fusion.py")
    spec = importlib.util.spec_from_file_location("_interfuse_tests_reference_fusion", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
