"""The one writer thread: owns the write connection, runs queued tasks inside `BEGIN IMMEDIATE`.

Tasks that queue up while a transaction commits are committed together (group commit), each in
its own savepoint so one task's logic error does not undo its neighbours. A future resolves only
after COMMIT returned, so a result means "durable". If a batch cannot commit, its tasks are
retried one by one, so only the tasks that really cannot be written fail.

The guard runs before each batch and after its COMMIT: a batch is not written into a file that
was deleted or replaced, and one whose file vanished during the commit does not count as written.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from node.meter.db import MeterUnavailable

T = TypeVar("T")
Task = Callable[[sqlite3.Connection], Any]

log = logging.getLogger(__name__)

_STOP = object()


class _Failed(Exception):
    """The database itself failed while running a batch (not a task's own logic error)."""

    def __init__(self, *, at_begin: bool) -> None:
        super().__init__()
        self.at_begin = at_begin  # no lock / read-only: every task would fail the same way


class Writer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_batch: int = 256,
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        """`guard` raises MeterUnavailable when the file `conn` writes is no longer the
        meter's file."""
        self._conn = conn
        self._max_batch = max_batch
        self._guard = guard
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="meter-writer", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[sqlite3.Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        # Running from the start: cancelling the caller (asyncio.wrap_future propagates
        # cancellation) must never skip a write such as a request's finish.
        future.set_running_or_notify_cancel()
        with self._close_lock:
            if self._closed:
                future.set_exception(MeterUnavailable("the meter is closed"))
                return future
            self._queue.put((task, future))
        return future

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("meter writer batch failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(MeterUnavailable(f"meter writer failed: {exc}"))

    def _run_batch(self, batch: list[tuple[Task, Future[Any]]]) -> None:
        try:
            outcomes = self._transaction(batch)
        except _Failed as exc:
            if len(batch) > 1 and not exc.at_begin:
                for item in batch:  # isolate the tasks that cannot be written
                    self._run_batch([item])
                return
            for _, future in batch:
                future.set_exception(
                    MeterUnavailable(f"meter database not writable: {exc.__cause__}")
                )
            return
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _transaction(self, batch: list[tuple[Task, Future[Any]]]) -> list[tuple[bool, Any]]:
        conn = self._conn
        try:
            self._guard()
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, MeterUnavailable) as exc:
            raise _Failed(at_begin=True) from exc
        outcomes: list[tuple[bool, Any]] = []
        try:
            for task, _ in batch:
                conn.execute("SAVEPOINT task")
                try:
                    value = task(conn)
                except (sqlite3.IntegrityError, sqlite3.ProgrammingError) as exc:
                    self._undo_task()
                    outcomes.append((False, exc))
                    continue
                except sqlite3.Error:
                    raise  # the database failed: the whole batch is retried task by task
                except Exception as exc:
                    self._undo_task()  # the task's own error: undo only this task
                    outcomes.append((False, exc))
                    continue
                conn.execute("RELEASE task")
                outcomes.append((True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _Failed(at_begin=False) from exc
        except BaseException:
            self._rollback()
            raise
        try:
            self._guard()
        except MeterUnavailable as exc:  # committed into a file that is gone: not durable
            raise _Failed(at_begin=True) from exc
        return outcomes

    def _undo_task(self) -> None:
        self._conn.execute("ROLLBACK TO task")
        self._conn.execute("RELEASE task")

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("meter rollback failed")
