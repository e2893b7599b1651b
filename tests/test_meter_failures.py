"""A database that cannot be written makes `open_request` fail with MeterUnavailable, cleanly:
nothing half-written, neighbours in the same batch unharmed, the meter usable again after."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.meter import Meter, MeterUnavailable, Usage
from tests.meter_support import start


def test_locked_beyond_the_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db, busy_timeout_s=0.2) as meter:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        began = time.monotonic()
        with pytest.raises(MeterUnavailable, match="locked"):
            meter.open_request(start("r1")).result(timeout=10)
        assert 0.15 < time.monotonic() - began < 5
        blocker.execute("ROLLBACK")
        blocker.close()
        assert meter.request_row("r1") is None  # nothing half-written
        meter.open_request(start("r2")).result(timeout=10)  # works again once the lock is gone
        assert meter.request_row("r2")["status"] == "running"


def test_queued_writes_fail_together_not_one_timeout_each(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db, busy_timeout_s=0.3) as meter:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        futures = [meter.open_request(start(f"r{i}")) for i in range(30)]
        failures = [f.exception(timeout=30) for f in futures]
        elapsed = time.monotonic() - began
        blocker.execute("ROLLBACK")
        blocker.close()
        assert all(isinstance(e, MeterUnavailable) for e in failures)
        assert elapsed < 0.3 * 30 / 2  # a few busy timeouts, far from one per queued write
        assert meter.billing_requests() == []


def test_full_database(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Meter(db).close()
    size = db.stat().st_size
    with Meter(db, max_size_bytes=size + 4096) as meter:
        opened: list[str] = []
        with pytest.raises(MeterUnavailable, match="full"):
            for i in range(10_000):
                rid = f"request-{i:05d}-" + "x" * 200
                meter.open_request(start(rid)).result(timeout=10)
                opened.append(rid)
        assert opened  # some rows fit before the cap
        assert len(opened) < 10_000
        rows = meter.billing_requests(limit=20_000)
        assert {r["id"] for r in rows} == set(opened)  # the failed one left nothing behind
        # Rows already open can still be finished (an UPDATE needs no new page).
        meter.finish(opened[0], Usage(1, 0, 1), "ok").result(timeout=10)


def test_batch_neighbours_of_a_failing_write_still_commit(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Meter(db).close()
    size = db.stat().st_size
    with Meter(db, max_size_bytes=size + 4096) as meter:
        meter.open_request(start("small")).result()
        # Queue many writes at once so they share transactions; the big ones cannot fit.
        futures = [meter.open_request(start("big-" + str(i) + "y" * 3000)) for i in range(20)]
        futures.append(meter.finish("small", Usage(2, 0, 3), "ok"))
        outcomes = [f.exception(timeout=10) for f in futures]
        assert all(isinstance(e, MeterUnavailable) for e in outcomes[:-1] if e is not None)
        assert any(isinstance(e, MeterUnavailable) for e in outcomes[:-1])
        assert outcomes[-1] is None
        assert meter.request_row("small")["status"] == "ok"


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder any user can reach (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="llm-node-ro-"))
    folder.chmod(0o777)  # -wal/-shm may be created, the database file itself is read-only
    yield folder
    shutil.rmtree(folder)


def test_read_only_database(open_folder: Path) -> None:
    db = open_folder / "m.db"
    with Meter(db) as meter:
        meter.create_key("LLM")
    db.chmod(0o444)
    outcome = _as_unprivileged(lambda: _try_open(db)) if os.geteuid() == 0 else _try_open(db)
    assert outcome.startswith("keys=1 unavailable:"), outcome
    assert "readonly" in outcome


def _try_open(db: Path) -> str:
    with Meter(db, busy_timeout_s=0.5) as meter:
        result = f"keys={len(meter.list_keys())} "
        try:
            meter.open_request(start("r1")).result(timeout=10)
        except MeterUnavailable as exc:
            return result + f"unavailable: {exc}"
        return result + "written"


def _as_unprivileged(action: object) -> str:
    """Run `action` in a forked child as `nobody`: root ignores file permissions."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            text = action()  # type: ignore[operator]
        except BaseException as exc:
            text = f"child failed: {exc!r}"
        os.write(write, str(text).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        return pipe.read().decode()
