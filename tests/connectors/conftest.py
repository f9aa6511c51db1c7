"""Fixtures every connector test file uses."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """The outbound client as factorflow configures it (timeouts, no redirects)."""
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False,
                      headers={"user-agent": "factorflow"}) as client:
        yield client
