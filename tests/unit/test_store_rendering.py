"""How MySQLCursor.render_rows renders a chunk's values: as PyMySQL's own escaping would.

Pure: the columns are rendered with PyMySQL's default encoders, no server.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from pymysql.converters import escape_item

from taskman.store.connection import _rendered


def _escape(value: Any) -> str:
    return str(escape_item(value, "utf8mb4"))


@pytest.mark.parametrize(
    "column",
    [
        ["demo"] * 5 + ["other", None],  # repeated: rendered once each
        [f"it's {i} \\ \n \x00 \x1a \"" for i in range(6)],  # distinct
        [0, 0, 0, 7, None, None],
        [1, 1.0, True, 1, 1, 1],  # equal as keys, three literals
        [Decimal("1.0"), 1, 1, 1],
        [2.5, 2.5, 2.5, None],
        [datetime(2030, 1, 2, 3, 4, 5, 6)] * 4 + [None],
        [None, None, None],
        ["%s", "%s", "%(x)s", "{rows}"],
    ],
)
def test_every_value_is_rendered_as_pymysql_renders_it(column: list[Any]) -> None:
    assert _rendered(column, _escape) == [_escape(value) for value in column]
