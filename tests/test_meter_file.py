"""The database file itself: created 0600 whatever the umask, never created again while open,
and a file deleted or replaced under an open meter makes it unavailable instead of writing rows
where nobody will find them."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from node.meter import Meter, MeterUnavailable, Usage
from node.meter.db import connect
from tests.meter_support import start

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _side_files(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm")]


@pytest.mark.parametrize("umask", [0o022, 0o277], ids=["umask022", "umask277"])
def test_database_wal_and_shm_are_created_0600(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "m.db"
    old = os.umask(umask)  # 0277 would leave even the owner unable to write without a chmod
    try:
        with Meter(db) as meter:
            meter.create_key("LLM")
            meter.list_keys()  # a reader maps the -shm as well
            wal, shm = _side_files(db)
            assert wal.exists() and shm.exists()
            assert {p.name: _mode(p) for p in (db, wal, shm)} == {
                p.name: 0o600 for p in (db, wal, shm)
            }
    finally:
        os.umask(old)


def test_the_clis_first_open_creates_the_database_0600(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    command = [sys.executable, "-m", "node.cli", "api-keys", "create", "--level", "LLM"]
    done = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", *command, "--db", str(db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(db) == 0o600


def test_an_existing_file_keeps_its_mode_and_a_shared_one_is_warned_about(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "m.db"
    Meter(db).close()
    db.chmod(0o640)  # the operator's choice (e.g. a backup group) is theirs to make
    with Meter(db) as meter:
        meter.create_key("LLM")
        assert _mode(db) == 0o640
        assert _mode(_side_files(db)[0]) == 0o640  # SQLite gives -wal the database's mode
    assert "readable by other users (mode 0640)" in caplog.text


def _in_new_thread(action: Callable[[], T]) -> T | BaseException:
    """Run `action` on a fresh thread: its read connection is opened only now."""
    result: list[T | BaseException] = []

    def run() -> None:
        try:
            result.append(action())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return result[0]


@pytest.mark.parametrize("with_side_files", [False, True])
def test_a_deleted_file_is_unavailable_and_never_recreated(
    tmp_path: Path, with_side_files: bool
) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        _key, secret = meter.create_key("LLM")
        assert meter.verify_key(secret) is not None
        meter.open_request(start("before")).result(timeout=10)
        db.unlink()
        if with_side_files:
            for side in _side_files(db):
                side.unlink()
        with pytest.raises(MeterUnavailable, match="was deleted"):
            meter.verify_key(secret)
        with pytest.raises(MeterUnavailable, match="was deleted"):
            meter.open_request(start("after")).result(timeout=10)
        with pytest.raises(MeterUnavailable, match="was deleted"):
            meter.finish("before", Usage(3, 0, 4), "ok").result(timeout=10)
        fresh = _in_new_thread(lambda: meter.verify_key(secret))  # a new read connection
        assert isinstance(fresh, MeterUnavailable), fresh
        assert isinstance(_in_new_thread(meter.list_keys), MeterUnavailable)
        assert not db.exists()
    assert not db.exists()  # closing does not bring it back either


def _other_meter_db(path: Path) -> str:
    """A valid meter database with a key of its own; returns that key's secret."""
    with Meter(path) as other:
        _key, secret = other.create_key("LLM", comment="the replacement's key")
    return secret


def test_a_replaced_file_is_unavailable_and_gets_no_rows(tmp_path: Path) -> None:
    db, replacement = tmp_path / "m.db", tmp_path / "new.db"
    other_secret = _other_meter_db(replacement)
    with Meter(db) as meter:
        _key, secret = meter.create_key("LLM")
        meter.open_request(start("before")).result(timeout=10)
        os.replace(replacement, db)
        for who in (secret, other_secret):  # neither file's key is served any more
            with pytest.raises(MeterUnavailable, match="was replaced"):
                meter.verify_key(who)
            fresh = _in_new_thread(lambda who=who: meter.verify_key(who))
            assert isinstance(fresh, MeterUnavailable), fresh
        with pytest.raises(MeterUnavailable, match="was replaced"):
            meter.open_request(start("after")).result(timeout=10)
        with pytest.raises(MeterUnavailable, match="was replaced"):
            meter.checkpoint("before", Usage(3, 0, 4)).result(timeout=10)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 0
        assert conn.execute("SELECT comment FROM api_keys").fetchall() == [
            ("the replacement's key",)
        ]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_a_node_killed_after_its_file_was_replaced_leaves_the_replacement_intact(
    tmp_path: Path,
) -> None:
    """SQLite keeps the -wal of a moved database and the next opener of the path would replay
    it into the replacement (a restored backup): the meter empties its WAL once it notices."""
    db, replacement = tmp_path / "m.db", tmp_path / "restored.db"
    other_secret = _other_meter_db(replacement)
    script = textwrap.dedent(
        f"""
        import os, signal
        from node.meter import Meter, MeterUnavailable, Usage
        from tests.meter_support import start
        meter = Meter({str(db)!r})
        for i in range(50):
            meter.create_key("LLM", comment=f"lost {{i}}")
            meter.open_request(start(f"r{{i}}", prompt_tokens=9)).result()
        os.replace({str(replacement)!r}, {str(db)!r})
        try:
            meter.list_keys()
        except MeterUnavailable:
            os.kill(os.getpid(), signal.SIGKILL)
        raise SystemExit("the replaced file went unnoticed")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Meter(db) as meter:  # the next start, on the restored file
        assert meter.verify_key(other_secret) is not None
        assert [k.comment for k in meter.list_keys()] == ["the replacement's key"]
        assert meter.billing_requests() == []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_a_file_replaced_during_a_commit_does_not_count_as_written(tmp_path: Path) -> None:
    """The writer checks the file again after COMMIT: a row that went into a file which left
    the path while committing is reported as not written."""
    db, replacement = tmp_path / "m.db", tmp_path / "new.db"
    _other_meter_db(replacement)
    with Meter(db) as meter:

        def swap_while_writing(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE api_keys SET comment = 'x'")
            os.replace(replacement, db)  # after the check before the batch, before COMMIT

        future = meter._writer.submit(swap_while_writing)  # the one way inside a transaction
        with pytest.raises(MeterUnavailable, match="was replaced"):
            future.result(timeout=10)


def test_a_missing_file_is_created_only_by_the_first_open(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        db.unlink()
        for side in _side_files(db):
            side.unlink()
        with pytest.raises(MeterUnavailable):
            meter.billing_status()
        assert not db.exists()
    with Meter(db) as meter:  # a new start creates and migrates a new file
        assert meter.list_keys() == []
        assert _mode(db) == 0o600


def test_a_connection_never_creates_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "m.db"
    with pytest.raises(MeterUnavailable, match="unable to open"):
        connect(str(missing), 0.1, synchronous="NORMAL")
    assert not missing.exists()


def test_the_path_is_fixed_at_open_across_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Meter("m.db") as meter:
        _key, secret = meter.create_key("LLM")
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert _in_new_thread(lambda: meter.verify_key(secret) is not None) is True
    assert not (tmp_path / "elsewhere" / "m.db").exists()
