"""One command to one device, answered as (status, body): the outcomes the
REST route gives (docs/api.md), shared by every front that takes commands
from outside (REST, AMQP RPC), so all of them refuse, time out and report in
the same words.

    status, body = await call_command(core, "dev-01", "ping", None, timeout=5.0, queue=False)

200 with the result (`ok: false` when the device reported a failure); 400
`bad_request`; 404 `unknown_device` (nothing sent); 409 `device_offline`;
503 `busy` or `broker_unavailable`; 504 `timeout` with `device_state`."""
from __future__ import annotations

from typing import Any

from edgewire.gateway.errors import CommandBusy, CommandOffline, CommandRejected, CommandTimeout, MqttError

__all__ = ["call_command", "failure"]


def failure(code: str, message: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    body.update(extra)
    return body


async def call_command(core: Any, device_id: str, name: str, args: Any, *, timeout: float | None,
                       queue: bool) -> tuple[int, dict[str, Any]]:
    commands = core.commands
    try:
        commands.check(device_id, name, args, timeout)
        if core.registry.get(device_id) is None:
            return 404, failure("unknown_device", f"no device {device_id!r} has been seen; nothing was sent")
        result = await commands.send(device_id, name, args, timeout=timeout, queue=queue)
    except CommandRejected as e:
        return 400, failure("bad_request", str(e))
    except CommandOffline as e:
        dev = core.registry.get(device_id)
        return 409, failure("device_offline", str(e), device=device_id, command=name,
                            why_offline=None if dev is None else dev.why)
    except CommandBusy as e:
        return 503, failure("busy", str(e))
    except CommandTimeout as e:
        dev = core.registry.get(device_id)
        state = dev.summary()["state"] if dev is not None else "unknown"
        return 504, failure("timeout", f"{e}; the device is {state}", device=device_id, command=name,
                            device_state=state)
    except MqttError as e:
        return 503, failure("broker_unavailable", f"command not sent: {e}")
    return 200, result.as_dict()
