"""PostgreSQL for tests: a throwaway database per test run, a schema per test, a cuttable link.

The machine's PostgreSQL (``CLAWTRACE_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test``, trust auth) is shared with
other tests and must never be stopped: each test run creates its own
database ``ct_test_<random>`` and drops it at the end, each test gets a fresh
schema in it (the store URL carries ``options=-csearch_path=...``), and
outages are made with ``CuttableLink``, a TCP proxy between a store and
PostgreSQL that a test can cut and restore.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import socket
import threading
import urllib.parse
from collections.abc import Iterator

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

ADMIN_URL = os.environ.get("CLAWTRACE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def admin_connection(url: str = ADMIN_URL) -> psycopg.Connection[TupleRow]:
    """A connection as the test superuser; fails loudly, with what to do, if there is none."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {url} ({str(exc).strip()}): the store tests need it."
            " Start it with scripts/services.sh, or point CLAWTRACE_TEST_POSTGRES at another server."
        ) from exc


def with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def with_schema(url: str, schema: str) -> str:
    """``url`` with every connection's search_path set to ``schema``."""
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query), ("options", f"-csearch_path={schema}")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def with_port(url: str, host: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))


@contextlib.contextmanager
def fresh_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A new database for this test run (its URL), dropped afterwards whatever is still connected."""
    name = f"ct_test_{secrets.token_hex(6)}"
    with admin_connection(admin_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_url, name)
    finally:
        with admin_connection(admin_url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """A new, empty schema in the test database: the URL of a store living in it."""
    name = f"t_{secrets.token_hex(6)}"
    with admin_connection(database_url) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield with_schema(database_url, name)
    finally:
        with admin_connection(database_url) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


class CuttableLink:
    """A loopback TCP proxy to PostgreSQL that a test can cut (PostgreSQL "goes away") and restore.

    Cut: every proxied connection is closed and new ones are refused (the
    listening socket is closed), as when the server is down. Restore: it
    listens again on the same port. Both do nothing if already so.
    """

    def __init__(self, target_url: str = ADMIN_URL) -> None:
        parts = urllib.parse.urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stopping = threading.Event()
        self._accepting: threading.Thread | None = None
        self._down = False
        self._start_accepting()

    def url(self, url: str) -> str:
        """``url`` (a PostgreSQL URL) redirected through this link."""
        return with_port(url, "127.0.0.1", self.port)

    def cut(self) -> None:
        if self._down:
            return
        self._down = True
        self._stop_accepting()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def restore(self) -> None:
        if not self._down:
            return
        self._listener = self._listen(self.port)
        self._down = False
        self._start_accepting()

    def close(self) -> None:
        self.cut()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.1)
        return listener

    def _start_accepting(self) -> None:
        self._stopping.clear()
        self._accepting = threading.Thread(target=self._accept_loop, name="cuttable-link", daemon=True)
        self._accepting.start()

    def _stop_accepting(self) -> None:
        self._stopping.set()
        if self._accepting is not None:
            self._accepting.join(5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the link is cut)."""
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select(timeout=1.0):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = source.recv(65536)
                        if not data:
                            return
                        peer[source].sendall(data)
            except (OSError, ValueError):
                return
            finally:
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.close()
                with self._lock:
                    if (client, upstream) in self._pairs:
                        self._pairs.remove((client, upstream))
