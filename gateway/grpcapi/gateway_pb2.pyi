from edgewire.gateway.grpcapi import forward_pb2 as _forward_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("filters", "after")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedScalarFieldContainer[str]
    after: int
    def __init__(self, filters: _Optional[_Iterable[str]] = ..., after: _Optional[int] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("after", "first_available", "missed", "reason")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    FIRST_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    after: int
    first_available: int
    missed: int
    reason: str
    def __init__(self, after: _Optional[int] = ..., first_available: _Optional[int] = ..., missed: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class StreamEvent(_message.Message):
    __slots__ = ("reading", "gap")
    READING_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    reading: _forward_pb2.Reading
    gap: Gap
    def __init__(self, reading: _Optional[_Union[_forward_pb2.Reading, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("id", "online", "state", "boot", "fw", "hw", "messages", "readings", "duplicates", "missing", "details_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    FW_FIELD_NUMBER: _ClassVar[int]
    HW_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    online: bool
    state: str
    boot: int
    fw: str
    hw: str
    messages: int
    readings: int
    duplicates: int
    missing: int
    details_json: str
    def __init__(self, id: _Optional[str] = ..., online: _Optional[bool] = ..., state: _Optional[str] = ..., boot: _Optional[int] = ..., fw: _Optional[str] = ..., hw: _Optional[str] = ..., messages: _Optional[int] = ..., readings: _Optional[int] = ..., duplicates: _Optional[int] = ..., missing: _Optional[int] = ..., details_json: _Optional[str] = ...) -> None: ...

class CommandRequest(_message.Message):
    __slots__ = ("device", "command", "args_json", "timeout", "queue")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    device: str
    command: str
    args_json: str
    timeout: float
    queue: bool
    def __init__(self, device: _Optional[str] = ..., command: _Optional[str] = ..., args_json: _Optional[str] = ..., timeout: _Optional[float] = ..., queue: _Optional[bool] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("device", "command", "id", "ok", "value_json", "error", "elapsed")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    device: str
    command: str
    id: str
    ok: bool
    value_json: str
    error: str
    elapsed: float
    def __init__(self, device: _Optional[str] = ..., command: _Optional[str] = ..., id: _Optional[str] = ..., ok: _Optional[bool] = ..., value_json: _Optional[str] = ..., error: _Optional[str] = ..., elapsed: _Optional[float] = ...) -> None: ...

class ListSinksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSinksResponse(_message.Message):
    __slots__ = ("sinks",)
    SINKS_FIELD_NUMBER: _ClassVar[int]
    sinks: _containers.RepeatedCompositeFieldContainer[Sink]
    def __init__(self, sinks: _Optional[_Iterable[_Union[Sink, _Mapping]]] = ...) -> None: ...

class Sink(_message.Message):
    __slots__ = ("name", "type", "state", "cursor", "lag", "lag_seconds", "delivered_entries", "delivered_readings", "failures", "lost_to_retention", "last_error", "last_delivery", "stats_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_READINGS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LOST_TO_RETENTION_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    state: str
    cursor: int
    lag: int
    lag_seconds: float
    delivered_entries: int
    delivered_readings: int
    failures: int
    lost_to_retention: int
    last_error: str
    last_delivery: float
    stats_json: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., state: _Optional[str] = ..., cursor: _Optional[int] = ..., lag: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., delivered_entries: _Optional[int] = ..., delivered_readings: _Optional[int] = ..., failures: _Optional[int] = ..., lost_to_retention: _Optional[int] = ..., last_error: _Optional[str] = ..., last_delivery: _Optional[float] = ..., stats_json: _Optional[str] = ...) -> None: ...
