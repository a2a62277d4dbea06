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
