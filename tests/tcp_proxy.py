"""A TCP forwarder on 127.0.0.1 that a test puts between processes and Postgres or Redis, to take the dependency
away from them and give it back, as an outage or a restart does, without touching the shared server itself."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from tests.processes import free_port


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`.

    `down()` closes every open connection and refuses new ones (a server that stopped); `hang()` accepts new
    connections and never answers (a server or network that stopped answering); `up()` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._mode = "up"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._closed = False
        self._listen()

    def url(self, url: str) -> str:
        """`url` with its `host:port` replaced by the proxy's."""
        scheme, rest = url.split("://", 1)
        auth, _, tail = rest.rpartition("@")
        path = tail.split("/", 1)[1] if "/" in tail else ""
        return f"{scheme}://{auth + '@' if auth else ''}127.0.0.1:{self.port}/{path}"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            if self._mode == "hang":
                with self._lock:
                    self._held.append(client)
                continue
            if self._mode == "down":
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def _drop_connections(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
            held, self._held = self._held, []
        for sock in [s for pair in pairs for s in pair] + held:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def down(self) -> None:
        """Refuse connections and break the open ones."""
        self._mode = "down"
        if self._listener is not None:
            # shutdown() first: close() alone leaves a thread blocked in accept() accepting on Linux.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        self._drop_connections()

    def hang(self) -> None:
        """Accept connections and never answer; break the open ones."""
        if self._listener is None:
            self._listen()
        self._mode = "hang"
        self._drop_connections()

    def up(self) -> None:
        """Forward again."""
        self._drop_connections()  # connections held by hang() were never answered: they are broken too
        self._mode = "up"
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.down()
