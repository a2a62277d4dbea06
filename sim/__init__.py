"""The Edgewire fleet simulator: the real device SDK on simulated boards.

    from edgewire.sim import Fleet
    with Fleet("mqtt://127.0.0.1:1883", devices=50, rate=2, qos=1, seed=1) as fleet:
        ...
    print(fleet.report().render())

See docs/simulator.md."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgewire.sim.errors import SimError

if TYPE_CHECKING:
    from edgewire.sim.fleet import Fleet, Group
    from edgewire.sim.report import DeviceReport, FleetReport

__all__ = ["DeviceReport", "Fleet", "FleetReport", "Group", "SimError"]


def __getattr__(name: str) -> Any:
    # The fleet imports the device SDK; load it only when it is used.
    if name in ("Fleet", "Group"):
        from edgewire.sim import fleet
        return getattr(fleet, name)
    if name in ("DeviceReport", "FleetReport"):
        from edgewire.sim import report
        return getattr(report, name)
    raise AttributeError(f"module 'edgewire.sim' has no attribute {name!r}")
