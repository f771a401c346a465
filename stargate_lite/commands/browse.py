"""`stargate-lite browse`: the store in Datasette, read-only, with what each table holds and the queries a
researcher asks of a run (their SQL lives with the store's: store/browse.py)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StargateError
from ..store import BROWSE_QUERIES, TABLE_NOTES, Store

if TYPE_CHECKING:
    from datasette.app import Datasette

DATABASE = "stargate"  # Datasette names a database after its file's stem: /stargate, /stargate/TABLE
BROWSE_INSTALL = "pip install 'stargate-lite[browse]'"


def browse_metadata() -> dict:
    """Datasette's metadata: each table's description and columns, and the canned queries."""
    tables = {name: {"description": about, **({"columns": columns} if columns else {})}
              for name, (about, columns) in TABLE_NOTES.items()}
    queries = {name: {**query, "sql": query["sql"].strip()} for name, query in BROWSE_QUERIES.items()}
    return {"title": "stargate-lite store", "databases": {DATABASE: {"tables": tables, "queries": queries}}}


def browse_app(home: Path | str | None = None) -> Datasette:
    """A Datasette instance over the home's store, opened read-only (the extra `browse` installs Datasette)."""
    try:
        from datasette.app import Datasette
    except ImportError:
        raise StargateError(f"browse needs Datasette: {BROWSE_INSTALL}") from None
    store = Store(home, read_only=True)
    # Datasette opens the file read-only itself (mode=ro), or as immutable where the store could only be read so
    files = {"immutables" if store.immutable else "files": [str(store.path)]}
    store.db.close()
    return Datasette(**files, metadata=browse_metadata(),
                     settings={"sql_time_limit_ms": 10_000, "facet_time_limit_ms": 1_000})


def _check_free(host: str, port: int) -> None:
    """Bind the address as the server will (SO_REUSEADDR, as uvicorn does) and let it go: a port another server
    holds is one line here, before a URL that would lead to that server is printed."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise StargateError(f"port {port} on {host} is in use (another server?): give another --port") from None
            raise StargateError(f"cannot serve on {host}:{port} ({err.strerror}): give another --host or --port") from None


def browse(home: Path | str | None = None, host: str = "127.0.0.1", port: int = 8001,
           on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the store until interrupted (Ctrl-C); `on_ready` gets its URL, http://HOST:PORT/stargate, once the
    store and Datasette are found and before serving starts."""
    if not 1 <= port <= 65535:
        raise StargateError(f"--port {port} is not a port: give one from 1 to 65535")
    import uvicorn

    app = browse_app(home)
    _check_free(host, port)
    if on_ready:
        on_ready(f"http://{host}:{port}/{DATABASE}")
    asyncio.run(app.invoke_startup())
    uvicorn.run(app.app(), host=host, port=port, log_level="warning", lifespan="on")
