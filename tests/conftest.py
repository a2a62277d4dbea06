from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support import micropython
from tests.support.broker import Mosquitto


@pytest.fixture(scope="session")
def firmware_build() -> Path:
    """The firmware compiled to .mpy, built once per test session."""
    return micropython.build_firmware()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto on a free loopback port, stopped after the test."""
    b = Mosquitto(tmp_path).start()
    try:
        yield b
    finally:
        b.stop()
