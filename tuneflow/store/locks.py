"""Leases: a named lock that dies with its holder.

A promotion decision must be taken one at a time per model, across processes and machines, and a holder
killed with ``kill -9`` must not block the model forever. A lease is a row in a small SQL table
(``tuneflow_locks``): taking it is one atomic INSERT (or an UPDATE of an *expired* row), a background thread
renews it every ``ttl / 4`` seconds, and a holder that stops renewing loses it after ``ttl`` seconds.
SQLite (the default, beside a local MLflow store) serves one machine; several machines share a PostgreSQL
URL (``tracking.lock_url``). Expiry compares wall clocks, so machines sharing a lock need synchronized
clocks (NTP), as MLflow and Prefect already assume.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from tuneflow.config import sqlite_path

TABLE = "tuneflow_locks"
_metadata = sa.MetaData()
_locks = sa.Table(
    TABLE,
    _metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(500), nullable=False),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)
_engines: dict[str, sa.Engine] = {}


class LockTimeout(TimeoutError):
    """The lease was not obtained in time; the message names the holder."""


class LockLost(RuntimeError):
    """The lease expired under its holder (it could not renew it) and may now be held by someone else."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, since when, and until when unless renewed."""

    holder: str
    since: float
    expires: float

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = datetime.fromtimestamp(self.since).isoformat(sep=" ", timespec="seconds")
        left = max(self.expires - now, 0)
        return f"held by {self.holder} since {since} (lease ends in {left:.0f} s unless renewed)"


def default_lock_url(tracking_uri: str) -> str:
    """``sqlite:///<store>/locks.db`` beside a local SQLite MLflow store, else ``sqlite:///mlruns/locks.db``."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / 'locks.db'}"
    return "sqlite:///mlruns/locks.db"


def _engine(url: str) -> sa.Engine:
    if url not in _engines:
        kwargs: dict = {}
        if (db := sqlite_path(url)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            kwargs = {"connect_args": {"timeout": 30}}
        engine = sa.create_engine(url, **kwargs)
        _metadata.create_all(engine, checkfirst=True)
        _engines[url] = engine
    return _engines[url]


def holder_of(url: str, name: str) -> Holder | None:
    """The current holder of lease ``name`` (None when free or expired)."""
    with _engine(url).connect() as conn:
        row = conn.execute(sa.select(_locks).where(_locks.c.name == name)).first()
    if row is None or row.expires < time.time():
        return None
    return Holder(row.holder, row.since, row.expires)


def try_acquire(url: str, name: str, holder: str, ttl: float) -> bool:
    """Take lease ``name`` if it is free or expired; one atomic statement either way."""
    engine, now = _engine(url), time.time()
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(_locks).values(name=name, holder=holder, since=now, expires=now + ttl))
        return True
    except sa.exc.IntegrityError:
        pass  # a row exists: take it over only if its lease has run out
    with engine.begin() as conn:
        taken = conn.execute(
            sa.update(_locks)
            .where(_locks.c.name == name, _locks.c.expires < now)
            .values(holder=holder, since=now, expires=now + ttl)
        )
    return taken.rowcount == 1


def renew(url: str, name: str, holder: str, ttl: float) -> bool:
    """Extend our lease; False when it is no longer ours."""
    with _engine(url).begin() as conn:
        done = conn.execute(
            sa.update(_locks)
            .where(_locks.c.name == name, _locks.c.holder == holder)
            .values(expires=time.time() + ttl)
        )
    return done.rowcount == 1


def release(url: str, name: str, holder: str) -> None:
    with _engine(url).begin() as conn:
        conn.execute(sa.delete(_locks).where(_locks.c.name == name, _locks.c.holder == holder))


def describe_self(purpose: str) -> str:
    """``host:pid:token (purpose)``: enough for a waiter to find (or kill) the holder. The token makes each
    acquisition its own holder, so two threads of one process (or one lease taken over by the same process
    after it expired) never renew or release each other's lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]} ({purpose})"


def _acquire(
    url: str, name: str, me: str, ttl: float, timeout: float, notify: Callable[[str], None], poll: float
) -> None:
    """Wait for lease ``name`` (saying who holds it whenever that changes) until ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: str | None = None
    while not try_acquire(url, name, me, ttl):
        current = holder_of(url, name)
        if time.monotonic() > deadline:
            raise LockTimeout(
                f"lock '{name}' not obtained in {timeout:.0f} s: "
                + (current.describe() if current else "its holder just released it")
            )
        if current is not None and current.holder != seen:
            seen = current.holder
            left = deadline - time.monotonic()
            notify(f"waiting for lock '{name}': {current.describe()}; waiting up to {left:.0f} s more")
        time.sleep(poll)


@contextmanager
def lease(
    url: str,
    name: str,
    purpose: str,
    ttl: float = 60,
    timeout: float = 1800,
    notify: Callable[[str], None] = print,
    poll: float = 1.0,
) -> Iterator[Callable[[], None]]:
    """Hold lease ``name`` for the block, renewed in the background.

    Args:
        url: SQLAlchemy URL of the lock table.
        name: what is locked (e.g. ``promote:chatbot-intents``).
        purpose: what the holder is doing, shown to waiters.
        ttl: seconds the lease outlives its last renewal (a killed holder frees it after this).
        timeout: seconds to wait for it before :class:`LockTimeout`.
        notify: called with a line whenever we start waiting or the holder changes.
        poll: seconds between attempts while waiting.

    Yields:
        ``check()``: raises :class:`LockLost` if the lease expired under us (call it before acting on what
        the lock protects).
    """
    me = describe_self(purpose)
    _acquire(url, name, me, ttl, timeout, notify, poll)
    lost = threading.Event()
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(ttl / 4):
            try:
                if not renew(url, name, me, ttl):
                    lost.set()
                    return
            except Exception:  # a transient DB error: try again; the lease lasts ttl, not ttl/4
                continue

    renewer = threading.Thread(target=keep_alive, name=f"lease-{name}", daemon=True)
    renewer.start()

    def check() -> None:
        if lost.is_set() or not renew(url, name, me, ttl):
            lost.set()
            raise LockLost(f"lock '{name}' expired while held by {me}: its decision was not applied")

    try:
        yield check
    finally:
        stop.set()
        renewer.join(timeout=5)
        release(url, name, me)
