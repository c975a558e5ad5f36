# ruff: noqa
import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListStreamsRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("boot_id", "streams")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    streams: _containers.RepeatedCompositeFieldContainer[StreamStatus]
    def __init__(self, boot_id: _Optional[str] = ..., streams: _Optional[_Iterable[_Union[StreamStatus, _Mapping]]] = ...) -> None: ...

class StreamStatus(_message.Message):
    __slots__ = ("stream_id", "node_id", "node_cluster", "variant", "peer", "connected_since", "types")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    node_id: str
    node_cluster: str
    variant: str
    peer: str
    connected_since: _timestamp_pb2.Timestamp
    types: _containers.RepeatedCompositeFieldContainer[TypeStatus]
    def __init__(self, stream_id: _Optional[int] = ..., node_id: _Optional[str] = ..., node_cluster: _Optional[str] = ..., variant: _Optional[str] = ..., peer: _Optional[str] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., types: _Optional[_Iterable[_Union[TypeStatus, _Mapping]]] = ...) -> None: ...

class TypeStatus(_message.Message):
    __slots__ = ("type_url", "version_sent", "version_acked", "version_current", "waiting_for_ack", "acks", "nacks", "last_nack", "wildcard", "subscribed")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_SENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_ACKED_FIELD_NUMBER: _ClassVar[int]
    VERSION_CURRENT_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_ACK_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    NACKS_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    WILDCARD_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    version_sent: str
    version_acked: str
    version_current: str
    waiting_for_ack: bool
    acks: int
    nacks: int
    last_nack: Nack
    wildcard: bool
    subscribed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type_url: _Optional[str] = ..., version_sent: _Optional[str] = ..., version_acked: _Optional[str] = ..., version_current: _Optional[str] = ..., waiting_for_ack: bool = ..., acks: _Optional[int] = ..., nacks: _Optional[int] = ..., last_nack: _Optional[_Union[Nack, _Mapping]] = ..., wildcard: bool = ..., subscribed: _Optional[_Iterable[str]] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("message", "code", "version", "at")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    message: str
    code: int
    version: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, message: _Optional[str] = ..., code: _Optional[int] = ..., version: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
