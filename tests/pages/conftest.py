"""Page tests run on the local store only: pages do not depend on the backend."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def backend() -> dict[str, Any]:
    return {"storage": "local"}
