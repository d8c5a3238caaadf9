from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_process import GatewayProcess


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A real gateway subprocess on a free loopback port with its own data dir."""
    process = GatewayProcess(tmp_path / "gateway")
    process.start()
    try:
        yield process
    finally:
        process.stop()
