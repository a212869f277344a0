"""A raw HTTP/2 client (the h2 package over a plain socket) that can do what no gRPC library
does: open streams that never finish their request, ignore the server's stream limit, ping
in a tight loop, send bytes that are no valid message. The limits tests and the benchmark use
it to play a hostile client."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

GET_ITEM_PATH = "/inventory.v1.ItemService/GetItem"


def grpc_headers(host: str, path: str, token: str = "") -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", host),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    return headers


def grpc_frame(payload: bytes) -> bytes:
    """One length-prefixed gRPC message, uncompressed."""
    return struct.pack(">BI", 0, len(payload)) + payload


class _StreamLimitBlind(h2.connection.H2Connection):
    """A client connection that does not count its open streams, so that it opens more than
    the server's SETTINGS_MAX_CONCURRENT_STREAMS allows, as a hostile client would."""

    @property
    def open_outbound_streams(self) -> int:
        return 0


@dataclass
class GrpcReply:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset_code: int | None = None
    ended: bool = False  # the server ended the stream (END_STREAM or RST_STREAM)

    @property
    def grpc_status(self) -> int | None:
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)


class RawHttp2Client:
    """One HTTP/2 connection, driven by hand. `respect_stream_limit=False` opens streams past
    the server's limit instead of stopping at it."""

    def __init__(self, host: str, port: int, *, respect_stream_limit: bool = True, timeout_s: float = 5.0) -> None:
        self.authority = f"{host}:{port}"
        self.socket = socket.create_connection((host, port), timeout=timeout_s)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        connection_class = h2.connection.H2Connection if respect_stream_limit else _StreamLimitBlind
        self.connection = connection_class(config=config)
        self.connection.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.closed = False  # the server closed the TCP connection
        self.replies: dict[int, GrpcReply] = {}
        self.goaways: list[hyperframe.frame.GoAwayFrame] = []
        self._unread = b""
        self._flush()
        self._wait_for(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in self.events), timeout_s)

    @property
    def server_max_concurrent_streams(self) -> int:
        return self.connection.remote_settings.max_concurrent_streams

    def open_header_only_streams(self, count: int, path: str = GET_ITEM_PATH, token: str = "") -> list[int]:
        """Sends `count` request HEADERS (END_HEADERS, no DATA, no END_STREAM): requests that
        never arrive. Returns the ids of the streams sent; a respectful client stops at the
        server's limit."""
        sent = []
        for _ in range(count):
            stream_id = self.connection.get_next_available_stream_id()
            try:
                self.connection.send_headers(stream_id, grpc_headers(self.authority, path, token), end_stream=False)
            except h2.exceptions.TooManyStreamsError:
                break
            sent.append(stream_id)
            self.replies[stream_id] = GrpcReply()
        self._flush()
        return sent

    def call(self, path: str, payload: bytes, token: str = "", timeout_s: float = 5.0) -> GrpcReply:
        """A whole unary gRPC call whose request message is `payload`, as sent."""
        stream_id = self.connection.get_next_available_stream_id()
        self.replies[stream_id] = reply = GrpcReply()
        self.connection.send_headers(stream_id, grpc_headers(self.authority, path, token), end_stream=False)
        self.connection.send_data(stream_id, grpc_frame(payload), end_stream=True)
        self._flush()
        self._wait_for(lambda: self._stream_done(stream_id), timeout_s)
        return reply

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        self.connection.ping(opaque)
        self._flush()

    def pump(self, timeout_s: float) -> None:
        """Reads what the server sent within `timeout_s` (returns as soon as one read came)."""
        if self.closed:
            return
        self.socket.settimeout(timeout_s)
        try:
            data = self.socket.recv(65536)
        except TimeoutError:
            return
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return
        self._receive(data)
        try:
            self._flush()
        except OSError:
            self.closed = True

    def wait_until(self, predicate, timeout_s: float) -> bool:
        return self._wait_for(predicate, timeout_s)

    def goaway(self) -> hyperframe.frame.GoAwayFrame | None:
        """The server's first GOAWAY (grpc sends a second, final one when it stops taking streams)."""
        return self.goaways[0] if self.goaways else None

    def reset_streams(self) -> dict[int, int]:
        """Stream id -> error code of every stream the server reset."""
        return {e.stream_id: e.error_code for e in self.events if isinstance(e, h2.events.StreamReset)}

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> RawHttp2Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _stream_done(self, stream_id: int) -> bool:
        return self.closed or self.replies[stream_id].ended

    def _receive(self, data: bytes) -> None:
        """Hands h2 one frame at a time: h2 takes nothing after a GOAWAY, while grpc goes on
        answering the streams it still had (with UNAVAILABLE), so that what h2 refuses is read here."""
        self._unread += data
        while len(self._unread) >= 9:
            end = 9 + int.from_bytes(self._unread[:3], "big")
            if len(self._unread) < end:
                break
            frame, self._unread = self._unread[:end], self._unread[end:]
            if frame[3] == hyperframe.frame.GoAwayFrame.type:
                self.goaways.append(_parsed(frame))
            try:
                self._take(self.connection.receive_data(frame))
            except h2.exceptions.ProtocolError:
                self._read_past_goaway(frame)

    def _read_past_goaway(self, raw: bytes) -> None:
        frame = _parsed(raw)
        reply = self.replies.get(frame.stream_id)
        if isinstance(frame, hyperframe.frame.HeadersFrame):
            # Decoded even when no reply waits: the header table must follow every block.
            headers = {
                name.decode() if isinstance(name, bytes) else name: value.decode()
                if isinstance(value, bytes)
                else value
                for name, value in self.connection.decoder.decode(frame.data)
            }
            if reply is not None:
                if ":status" in headers:
                    reply.headers = headers
                else:
                    reply.trailers = headers
                reply.ended = reply.ended or "END_STREAM" in frame.flags
        elif isinstance(frame, hyperframe.frame.RstStreamFrame) and reply is not None:
            reply.reset_code, reply.ended = frame.error_code, True

    def _wait_for(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return bool(predicate())
            self.pump(min(left, 0.2))
        return True

    def _take(self, events: list[h2.events.Event]) -> None:
        for event in events:
            self.events.append(event)
            reply = self.replies.get(getattr(event, "stream_id", None) or 0)
            if reply is None:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                reply.headers = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                reply.trailers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                reply.data += event.data
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                reply.reset_code, reply.ended = event.error_code, True
            elif isinstance(event, h2.events.StreamEnded):
                reply.ended = True

    def _flush(self) -> None:
        data = self.connection.data_to_send()
        if data:
            self.socket.sendall(data)


def _parsed(raw: bytes) -> hyperframe.frame.Frame:
    frame, _ = hyperframe.frame.Frame.parse_frame_header(memoryview(raw[:9]))
    frame.parse_body(memoryview(raw[9:]))
    return frame
