"""Request rows: open durable and idempotent, checkpoints, finish once, recovery after a kill,
and many threads losing and double-counting nothing."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from node.meter import Meter, UnknownRequest, Usage
from node.meter.times import parse_moment
from tests.meter_support import Clock, start

REPO = Path(__file__).resolve().parents[1]


def test_open_is_durable_and_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        meter.set_price("smollm2-135m", "cpu", "1", "2")
        first = meter.open_request(start("r1", user="alice")).result()
        meter.set_price("smollm2-135m", "cpu", "3", "4")
        again = meter.open_request(start("r1", user="alice")).result()
        assert first == again  # the second open returns the row's own price, not the new one
        # Visible to another connection the moment the future resolved.
        with Meter(db) as other:
            rows = other.billing_requests()
        assert [(r["id"], r["status"], r["user"]) for r in rows] == [("r1", "running", "alice")]


def test_the_opening_row_carries_the_prompt_and_its_cost(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        meter.open_request(start("r1", prompt_tokens=18, cached_tokens=4)).result()
        row = meter.request_row("r1")
        assert row["status"] == "running"
        assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (18, 4, 0)
        assert row["cost"] == "0.00035604"  # 18 x 19.78 / 1M: owed even if the node dies now
        meter.open_request(start("unpriced", model="other", prompt_tokens=7)).result()
        assert meter.request_row("unpriced")["prompt_tokens"] == 7
        for bad in (-1, 1.5, None):
            with pytest.raises(ValueError, match="prompt token count"):
                meter.open_request(start("bad", prompt_tokens=bad)).result()  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="cached token count"):
            meter.open_request(start("bad", prompt_tokens=3, cached_tokens=-2)).result()
        assert meter.request_row("bad") is None


def test_checkpoint_then_finish_and_finish_only_once(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        meter.open_request(start("r1")).result()
        meter.checkpoint("r1", Usage(18, 0, 16)).result()
        row = meter.request_row("r1")
        assert row is not None
        assert (row["status"], row["completion_tokens"], row["cost"]) == (
            "running",
            16,
            "0.0030386",
        )
        bill = meter.finish("r1", Usage(18, 4, 20), "cancelled").result()
        again = meter.finish("r1", Usage(18, 4, 999), "ok").result()
        meter.checkpoint("r1", Usage(18, 4, 1234)).result()  # late checkpoint: ignored
        assert bill == again
        row = meter.request_row("r1")
        assert row is not None
        assert (row["status"], row["cached_tokens"], row["completion_tokens"]) == (
            "cancelled",
            4,
            20,
        )
        assert row["finished"] is not None and row["finished"].endswith("Z")


def test_unknown_requests_and_bad_arguments_fail_the_future_only(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        with pytest.raises(UnknownRequest):
            meter.finish("nope", Usage(), "ok").result()
        with pytest.raises(UnknownRequest):
            meter.checkpoint("nope", Usage()).result()
        meter.open_request(start("r1")).result()
        with pytest.raises(ValueError, match="status"):
            meter.finish("r1", Usage(), "done").result()
        with pytest.raises(ValueError, match="non-negative"):
            meter.checkpoint("r1", Usage(prompt_tokens=-1)).result()
        with pytest.raises(ValueError, match="empty"):
            meter.open_request(start("")).result()
        assert meter.request_row("r1")["status"] == "running"  # the writer lives on
        assert meter.finish("r1", Usage(1, 0, 1), "ok").result().priced is False


def test_cancelling_the_future_does_not_skip_the_write(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.open_request(start("r1")).result()
        future = meter.finish("r1", Usage(3, 0, 5), "cancelled")
        assert future.cancel() is False
        future.result()
        assert meter.request_row("r1")["status"] == "cancelled"


def test_recovery_after_a_killed_process_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from node.meter import Meter, Usage
        from tests.meter_support import start
        meter = Meter({str(db)!r})
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        meter.open_request(start("killed", prompt_tokens=18)).result()
        meter.checkpoint("killed", Usage(18, 2, 16)).result()
        meter.open_request(start("in-prefill", prompt_tokens=18)).result()  # no checkpoint yet
        meter.open_request(start("done")).result()
        meter.finish("done", Usage(1, 0, 1), "ok").result()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert proc.returncode == -9
    recovery_time = Clock(parse_moment("2030-01-01"))
    with Meter(db, clock=recovery_time) as meter:
        assert meter.recover_interrupted() == 2
        assert meter.recover_interrupted() == 0
        row = meter.request_row("killed")
        assert row is not None
        assert row["status"] == "interrupted"
        assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (18, 2, 16)
        assert row["cost"] == "0.0030386"
        assert row["finished"] is not None and row["finished"] >= row["started"]
        assert row["finished"] < "2030"  # the checkpoint's time, not the recovery's
        prefill = meter.request_row("in-prefill")
        assert prefill["status"] == "interrupted"
        counts = (prefill["prompt_tokens"], prefill["cached_tokens"], prefill["completion_tokens"])
        assert counts == (18, 0, 0)  # the prompt was counted when the row opened
        assert prefill["cost"] == "0.00035604"
        assert prefill["finished"] == prefill["started"]  # never checkpointed
        assert meter.request_row("done")["status"] == "ok"


def test_eight_threads_thousand_rows_lose_nothing_and_count_once(tmp_path: Path) -> None:
    threads, per_thread = 8, 125
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            rng = random.Random(worker)
            try:
                for i in range(per_thread):
                    rid = f"w{worker}-{i}"
                    meter.open_request(start(rid, key_id=f"key_{worker}")).result()
                    meter.checkpoint(rid, Usage(18, 0, 8)).result()
                    if rng.random() < 0.2:  # a retried open must not add a row
                        meter.open_request(start(rid, key_id=f"key_{worker}")).result()
                    meter.finish(rid, Usage(18, 0, 16), "ok").result()
                    if rng.random() < 0.2:  # a repeated finish must not count twice
                        meter.finish(rid, Usage(18, 0, 16), "ok").result()
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert errors == []
        total = meter.billing_status(by="key")["total"]
        rows = threads * per_thread
        assert total["requests"] == rows
        assert total["prompt_tokens"] == 18 * rows
        assert total["completion_tokens"] == 16 * rows
        assert Decimal(total["cost"]) == Decimal("0.0030386") * rows
        statuses = {r["status"] for r in meter.billing_requests(limit=rows + 10)}
        assert statuses == {"ok"}
        assert len(meter.billing_requests(limit=rows + 10)) == rows
