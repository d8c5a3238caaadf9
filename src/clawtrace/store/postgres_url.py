"""A PostgreSQL store URL, checked and turned into what psycopg needs.

``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?PARAMS]`` (also
``postgres://`` and SQLAlchemy's ``postgresql+psycopg://``). PARAMS are
libpq's (``sslmode``, ``options=-csearch_path%3Dclawtrace``, ...) plus one of
ours, ``pool_size``: the most connections the store's read pool opens.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from clawtrace.store import POSTGRES_SCHEMES
from clawtrace.store.base import StoreError

DEFAULT_POOL_SIZE = 8
# Applied unless the URL says otherwise. A store must notice a dead server
# within seconds (the gateway then stops acking and agents keep their events),
# not after the kernel's two-hour keepalive default.
_DEFAULTS = {
    "application_name": "clawtrace",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    # Unacknowledged data on a connection whose peer went away fails the call after this long (ms).
    "tcp_user_timeout": "20000",
}
_EXAMPLE = "postgresql://USER@HOST:5432/DATABASE"


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    conninfo: str  # what psycopg.connect takes, with our defaults filled in
    display: str  # for logs and messages: never the password
    pool_size: int


def parse_postgres_url(url: str) -> PostgresTarget:
    scheme, _, rest = url.partition("://")
    if scheme not in POSTGRES_SCHEMES:
        raise StoreError(f"{url!r} is not a PostgreSQL URL: expected {_EXAMPLE}")
    parts = urllib.parse.urlsplit("postgresql://" + rest)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    pool_size = DEFAULT_POOL_SIZE
    libpq_query = []
    for key, value in query:
        if key != "pool_size":
            libpq_query.append((key, value))
            continue
        try:
            pool_size = int(value)
        except ValueError:
            pool_size = 0
        if pool_size < 1:
            raise StoreError(f"pool_size={value!r} in the store URL: give a whole number of connections >= 1")
    libpq_url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(libpq_query)))
    try:
        given = conninfo_to_dict(libpq_url)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip()
        raise StoreError(f"invalid PostgreSQL URL ({reason}): expected {_EXAMPLE}[?PARAMS]") from None
    if not given.get("dbname"):
        raise StoreError(f"the PostgreSQL URL names no database: expected {_EXAMPLE}")
    defaults = {k: v for k, v in _DEFAULTS.items() if k not in given}
    return PostgresTarget(
        conninfo=make_conninfo(libpq_url, **defaults),
        display=_display(given),
        pool_size=pool_size,
    )


def _display(params: Mapping[str, object]) -> str:
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or "localhost")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params['dbname']}"
