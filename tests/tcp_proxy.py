"""A loopback TCP proxy whose connections a test can cut at once (a network failure without process death)."""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._lock = threading.Lock()  # guards _sockets; held only to add/remove/close, never across I/O
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.listener.close()
        self.cut(count=False)

    def cut(self, count: bool = True) -> None:
        """Reset every open connection (RST, as when a route disappears); new ones are accepted again."""
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for s in doomed:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        for s in doomed:
            # close() alone would not reset a connection whose pipe thread is blocked in recv() on it (that call keeps the
            # socket open until data comes, maybe a keepalive ping 30 s later): SHUT_RD wakes the reader first, and the
            # socket is reset (linger 0) as soon as the last user lets go of it.
            try:
                s.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            s.close()
        if count:
            self.cuts += 1

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
