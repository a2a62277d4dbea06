"""Small asyncio helpers shared by the gateway's components."""
from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a component's task and wait until it has ended; its
    CancelledError is expected and swallowed, any other error propagates."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
