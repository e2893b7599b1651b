"""API keys: secrets never stored, verification, expiry to the second, delete from another
process, coalesced last-used writes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from node.meter import Meter
from node.meter.keys import KEY_ID_PREFIX, SECRET_PREFIX
from node.meter.times import from_datetime
from tests.meter_support import Clock

REPO = Path(__file__).resolve().parents[1]


def test_secret_is_high_entropy_prefixed_and_the_id_is_short(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        key, secret = meter.create_key("LLM", comment="ci", org="acme")
        _, other = meter.create_key("ADMIN")
    assert secret.startswith(SECRET_PREFIX) and secret != other
    assert len(secret) - len(SECRET_PREFIX) >= 43  # 32 random bytes, url-safe base64
    assert key.id.startswith(KEY_ID_PREFIX) and len(key.id) <= 16
    assert (key.level, key.comment, key.org, key.expires) == ("LLM", "ci", "acme", None)


def test_secret_never_reaches_the_disk(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        secrets = [meter.create_key("LLM")[1] for _ in range(3)]
        for secret in secrets:
            assert meter.verify_key(secret) is not None
        # Files scanned while the meter is open (WAL not yet checkpointed) and after close.
        _assert_absent(tmp_path, secrets)
    _assert_absent(tmp_path, secrets)
    # What is stored is the SHA-256 (the WAL is folded into the file on close).
    assert hashlib.sha256(secrets[0].encode()).hexdigest().encode() in db.read_bytes()


def _assert_absent(folder: Path, secrets: list[str]) -> None:
    files = [p for p in folder.iterdir() if p.name.startswith("m.db")]
    assert any(p.name == "m.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            body = secret.removeprefix(SECRET_PREFIX)
            assert secret.encode() not in data, path
            assert body.encode() not in data, path


def test_verify_rejects_unknown_and_malformed_secrets(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        _key, secret = meter.create_key("ADMIN")
        verified = meter.verify_key(secret)
        assert verified is not None
        assert (verified.id, verified.level) == (meter.list_keys()[0].id, "ADMIN")
        assert meter.verify_key(secret[:-1]) is None
        assert meter.verify_key(secret + "x") is None
        assert meter.verify_key("") is None
        assert meter.verify_key(secret.removeprefix(SECRET_PREFIX)) is None


def test_unknown_level_is_refused(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        with pytest.raises(ValueError, match="level"):
            meter.create_key("ROOT")
        assert meter.list_keys() == []


def test_expiry_is_exact_to_the_second(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(0.25)  # created mid-second: the key's clock starts at the whole second
    with Meter(tmp_path / "m.db", clock=clock) as meter:
        key, secret = meter.create_key("LLM", expires_in_days=1)
        assert key.expires is not None
        assert key.expires - key.created == timedelta(days=1)
        assert key.created.microsecond == 0
        clock.now += 86_400 * 1_000_000 - 250_000 - 1  # one microsecond before expiry
        assert meter.verify_key(secret) is not None
        clock.now += 1  # exactly the expiry second
        assert meter.verify_key(secret) is None
        clock.advance(3600)
        assert meter.verify_key(secret) is None


def test_delete_from_another_process_fails_the_very_next_verify(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        key, secret = meter.create_key("LLM")
        for _ in range(5):  # warm: any cache would now hold the key
            assert meter.verify_key(secret) is not None
        done = subprocess.run(
            [sys.executable, "-m", "node.cli", "api-keys", "delete", key.id, "--db", str(db)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert meter.verify_key(secret) is None
        assert meter.list_keys() == []


def test_delete_in_process(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        key, secret = meter.create_key("LLM")
        assert meter.delete_key(key.id) is True
        assert meter.verify_key(secret) is None
        assert meter.delete_key(key.id) is False


def test_last_used_is_recorded_but_coalesced(tmp_path: Path) -> None:
    clock = Clock()
    with Meter(tmp_path / "m.db", clock=clock) as meter:
        _key, secret = meter.create_key("LLM")
        assert meter.list_keys()[0].last_used is None
        meter.verify_key(secret)
        first = clock.now
        meter.delete_key("key_flush")  # FIFO writer: the last-used write is done after this
        assert _last_used_us(meter) == first
        for _ in range(50):  # within the interval: no new writes queued
            clock.advance(0.05)
            meter.verify_key(secret)
        meter.delete_key("key_flush")
        assert _last_used_us(meter) == first
        clock.advance(5)
        meter.verify_key(secret)
        meter.delete_key("key_flush")
        assert _last_used_us(meter) == clock.now


def _last_used_us(meter: Meter) -> int:
    used = meter.list_keys()[0].last_used
    assert used is not None
    return from_datetime(used)
