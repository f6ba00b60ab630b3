from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inprocess.harness import InProcessNode


@pytest.fixture
def node(tmp_path: Path) -> Iterator[InProcessNode]:
    n = InProcessNode(tmp_path)
    yield n
    n.close()
