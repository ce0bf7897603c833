"""Marks each test with its layer (its folder), so `pytest -m unit|integration|runtime` runs one."""

from __future__ import annotations

from pathlib import Path

import pytest

LAYERS = ("unit", "integration", "runtime")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for layer in LAYERS:
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))
