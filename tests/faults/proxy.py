"""A TCP proxy between the service and the real PostgreSQL that injects connection faults.

It relays bytes both ways, one thread per direction, and can: cut every connection at once,
delay every chunk, black-hole all traffic (accept, read, never answer), and cut one connection
exactly when it sends COMMIT for a transaction that wrote, either before the server sees the
COMMIT (the transaction rolls back) or after the server has answered it (the transaction
committed). In both cases the client only sees its connection die during COMMIT.

The client side must not negotiate TLS or GSS encryption (``sslmode=disable`` and
``gssencmode=disable``) so that the frontend messages can be read: after the startup packet
each is a type byte, a big-endian int32 length (counting itself), then the body.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class CommitCut(Enum):
    """Where to cut the connection that sends the armed COMMIT."""

    BEFORE = "before"  # the server never receives COMMIT: the transaction rolls back
    AFTER = "after"  # the server commits and answers; the answer never reaches the client


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket | None
    closed: bool = False
    wrote: bool = False  # the open transaction sent an INSERT or UPDATE
    swallow: bool = False  # COMMIT was relayed under CommitCut.AFTER: drop the answer, cut
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class FaultProxy:
    """Listens on 127.0.0.1 (an ephemeral port) and relays to ``upstream``: a (host, port) or
    the path of a Unix socket."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.delay_seconds = 0.0
        self.blackhole = False
        self.commits_cut = 0
        self._armed: CommitCut | None = None
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    # -- controls ---------------------------------------------------------------------------

    def cut_all(self) -> int:
        """Close every open connection, both sides, as a crashed network path would."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()
        return len(pairs)

    def cut_next_commit(self, where: CommitCut) -> None:
        """Cut the next connection that sends COMMIT after an INSERT or UPDATE (one-shot)."""
        with self._lock:
            self._armed = where

    def open_connections(self) -> int:
        with self._lock:
            self._pairs = [p for p in self._pairs if not p.closed]
            return len(self._pairs)

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the other thread
        self._listener.close()
        self.cut_all()
        self._accepter.join(timeout=5)

    # -- relaying ---------------------------------------------------------------------------

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.upstream)
            return sock
        return socket.create_connection(self.upstream)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.blackhole:
                pair = _Pair(client, None)
                with self._lock:
                    self._pairs.append(pair)
                threading.Thread(target=self._swallow, args=(pair,), daemon=True).start()
                continue
            try:
                server = self._connect_upstream()
            except OSError:
                client.close()
                continue
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._frontend, args=(pair,), daemon=True).start()
            threading.Thread(target=self._backend, args=(pair,), daemon=True).start()

    def _swallow(self, pair: _Pair) -> None:
        """Read and drop everything: a server that accepts but never answers."""
        try:
            while pair.client.recv(65536):
                pass
        except OSError:
            pass
        pair.close()

    def _send(self, pair: _Pair, sock: socket.socket, data: bytes) -> bool:
        if self.blackhole:
            return True
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        try:
            sock.sendall(data)
        except OSError:
            pair.close()
            return False
        return True

    def _backend(self, pair: _Pair) -> None:
        assert pair.server is not None
        try:
            while True:
                data = pair.server.recv(65536)
                if not data:
                    break
                if pair.swallow:
                    # The server answered the COMMIT: it is durable, and the client never learns.
                    break
                if not self._send(pair, pair.client, data):
                    return
        except OSError:
            pass
        pair.close()

    def _frontend(self, pair: _Pair) -> None:
        """Relay client messages whole, watching for the armed COMMIT."""
        assert pair.server is not None
        buffer = b""
        startup = True
        try:
            while True:
                data = pair.client.recv(65536)
                if not data:
                    break
                buffer += data
                out = b""
                while True:
                    message, buffer, startup = _next_message(buffer, startup)
                    if message is None:
                        break
                    if self._is_armed_commit(pair, message):
                        if not self._cut_at_commit(pair, out, message):
                            return
                        out = b""
                        continue
                    out += message
                if out and not self._send(pair, pair.server, out):
                    return
        except OSError:
            pass
        pair.close()

    def _is_armed_commit(self, pair: _Pair, message: bytes) -> bool:
        kind, body = message[:1], message[5:]
        if kind in (b"Q", b"P") and (b"INSERT" in body.upper() or b"UPDATE" in body.upper()):
            pair.wrote = True
        if not (kind in (b"Q", b"P") and body.strip(b"\0 ;").upper() == b"COMMIT"):
            return False
        wrote, pair.wrote = pair.wrote, False
        return wrote and self._armed is not None

    def _cut_at_commit(self, pair: _Pair, pending: bytes, commit: bytes) -> bool:
        assert pair.server is not None
        with self._lock:
            where, self._armed = self._armed, None
        if where is None:  # another connection took the shot
            return self._send(pair, pair.server, pending + commit)
        self.commits_cut += 1
        if where is CommitCut.BEFORE:
            if pending:
                self._send(pair, pair.server, pending)
            pair.close()
            return False
        pair.swallow = True
        return self._send(pair, pair.server, pending + commit)


def _next_message(buffer: bytes, startup: bool) -> tuple[bytes | None, bytes, bool]:
    """The next whole frontend message of ``buffer``, the rest, and whether the next one is
    still an untyped startup-phase packet."""
    if startup:
        if len(buffer) < 8:
            return None, buffer, True
        (length,) = struct.unpack("!i", buffer[:4])
        if len(buffer) < length:
            return None, buffer, True
        (code,) = struct.unpack("!i", buffer[4:8])
        # An SSL or GSS request is answered with one byte and followed by the real startup.
        return buffer[:length], buffer[length:], code in (_SSL_REQUEST, _GSSENC_REQUEST)
    if len(buffer) < 5:
        return None, buffer, False
    (length,) = struct.unpack("!i", buffer[1:5])
    if len(buffer) < 1 + length:
        return None, buffer, False
    return buffer[: 1 + length], buffer[1 + length :], False
