"""A throwaway PostgreSQL server for the fleet tests: Debian's `initdb` and `pg_ctl` in a
temporary directory on a free port, stopped and removed at the end.

PostgreSQL refuses to run as root; as root the server runs as `nobody` (through `runuser`), in
a directory made for it under /tmp. Trust authentication on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

RUN_AS = "nobody"
BIN = Path(sys.executable).parent


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb);"
            " `apt-get install postgresql` (.ci/run does it)"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """`start()`; `stop()` (fast shutdown: clients see a crash); `start()` again; `remove()`."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="llm-node-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, RUN_AS)
        self._run("initdb", "-D", str(self.data), "-U", "fleet", "--auth=trust", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "max_connections = 40\nshared_buffers = 32MB\n"
            )
        self.started = False

    def url(self, database: str = "fleet") -> str:
        return f"postgresql://fleet@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.started = True
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'fleet'").fetchone() is None:
                conn.execute("CREATE DATABASE fleet")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.started = False

    def remove(self) -> None:
        if self.started:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url()) as conn:
            return conn.execute(sql, params).fetchall()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{log}")


def new_database(server: PostgresServer) -> str:
    """A fresh, empty database on `server`; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url(name)


def query(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


class ServeProcess:
    """A real `llm-node serve` in fleet mode: one small chat model, one decode thread."""

    def __init__(self, root: Path, name: str, fleet_url: str, gguf: Path, *extra: str) -> None:
        """`extra`: more `serve` arguments (e.g. `--fleet-poll 1`)."""
        self.root, self.name, self.fleet_url = root, name, fleet_url
        self.extra = extra
        self.db = root / f"{name}.db"
        self.registry = root / "models.toml"
        if not self.registry.exists():
            self.registry.write_text(
                f'[[model]]\nid = "smollm2-135m"\npath = "{gguf}"\n'
                "n_ctx = 4096\nparallel = 2\nn_threads = 1\nn_batch = 256\n"
            )
        self.log_path = root / f"{name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "llm-node"), *args, "--db", str(self.db)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        assert done.returncode == 0, f"llm-node {' '.join(args)}: {done.stderr}"
        return done.stdout

    def start(self) -> None:
        self.port = free_port()
        command = [
            str(BIN / "llm-node"),
            "serve",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            "--models",
            str(self.registry),
            "--gpu-type",
            "cpu",
            "--fleet-db",
            self.fleet_url,
            "--node-id",
            self.name,
            *self.extra,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=_env()
            )
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, f"{self.name} not healthy in 120 s"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def kill(self) -> None:
        """kill -9: no shutdown, no last export pass, running rows stay running."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def health(self) -> dict[str, object]:
        response = httpx.get(f"{self.url}/health", timeout=10)
        assert response.status_code == 200
        return response.json()

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def local_rows(self, columns: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return conn.execute(f"SELECT {columns} FROM requests").fetchall()
        finally:
            conn.close()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLM_NODE_")}
