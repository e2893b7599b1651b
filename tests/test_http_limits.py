"""The HTTP server's own limits, against a real `llm-node serve` on the real model: slow heads and
bodies are cut off while normal clients are served, oversized or malformed heads and one
connection too many get OpenAI-shaped errors, keep-alive still works. Raw sockets throughout:
an HTTP client library would never send these requests."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from node.cli import cli as node_cli
from node.config import embedded_model_path
from tests.api_fixtures import free_port
from tests.test_api_e2e import LLM_NODE, cli

TIMEOUT = 1.5  # --header-timeout, --body-timeout and --write-timeout of the server under test
SLACK = 2.5  # how late a drop may come on a loaded 2-core box
MAX_CONNECTIONS = 12
MAX_HEADER_KB = 8
MAX_HEADERS = 20
MAX_BODY_MB = 1


@dataclass
class Node:
    host: str
    port: int
    secret: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT + SLACK + 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("limits")
    db = tmp / "meter.db"
    secret = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))["secret"]
    registry = tmp / "models.toml"
    registry.write_text(
        f'[[model]]\nid = "chat"\npath = "{embedded_model_path()}"\nn_ctx = 1024\n'
        "parallel = 2\nn_threads = 1\n"
    )
    port = free_port()
    log = open(tmp / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [LLM_NODE, "serve", "--port", str(port), "--models", str(registry), "--db", str(db),
         "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
         "--write-timeout", str(TIMEOUT),
         "--max-connections", str(MAX_CONNECTIONS), "--max-header-kb", str(MAX_HEADER_KB),
         "--max-headers", str(MAX_HEADERS), "--max-body-mb", str(MAX_BODY_MB)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while not _healthy(url):
            assert process.poll() is None, (tmp / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp / "server.log").read_text()
            time.sleep(0.1)
        yield Node("127.0.0.1", port, secret)
        assert process.poll() is None, "the node died: " + (tmp / "server.log").read_text()
        assert "Traceback" not in (tmp / "server.log").read_text()  # no error of ours either
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class Answer:
    """What the server sent on one raw connection, until it closed it."""

    raw: bytes
    first_byte_after: float  # seconds from the first byte sent to the first byte received
    closed: bool

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    @property
    def headers(self) -> dict[str, str]:
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
        return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}

    @property
    def error(self) -> dict:
        body = json.loads(self.raw.split(b"\r\n\r\n", 1)[1])
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        return body["error"]


def exchange(
    sock: socket.socket,
    payload: bytes,
    *,
    step: float = 0.0,
    started: float | None = None,
    half_close: bool = False,
) -> Answer:
    """Send `payload` (one byte per `step` s when step > 0; the pause is a read with that
    deadline, so an answer ends the trickle at once), then read until the server closes.
    `started`: when the clock of `first_byte_after` started (default: now)."""
    started = time.monotonic() if started is None else started
    first: float | None = None
    raw = b""
    if step:
        for i in range(len(payload)):
            if time.monotonic() - started > TIMEOUT + SLACK:
                break  # not dropped in time: the caller's bounds fail
            try:
                sock.sendall(payload[i : i + 1])
            except OSError:  # closed under us: what it answered is still readable
                break
            if select.select([sock], [], [], step)[0]:
                break
    else:
        sock.sendall(payload)
    if half_close:
        sock.shutdown(socket.SHUT_WR)
    closed = False
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if first is None and chunk:
            first = time.monotonic() - started
        if not chunk:
            closed = True
            break
        raw += chunk
    sock.close()
    return Answer(raw, first if first is not None else time.monotonic() - started, closed)


SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: node\r\nX-Slow: " + b"a" * 2000
SLOW_BODY_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n"
)


def test_slow_heads_and_a_slow_body_are_dropped_while_a_normal_client_is_served(
    node: Node,
) -> None:
    def slow_head() -> Answer:
        started = time.monotonic()  # before the server's clock starts (at accept)
        return exchange(node.connect(), SLOW_HEAD, step=0.1, started=started)

    def slow_body() -> Answer:
        started = time.monotonic()
        sock = node.connect()
        sock.sendall(SLOW_BODY_HEAD)
        return exchange(sock, b"{", started=started)  # one byte of the 100000 declared

    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key=node.secret, max_retries=0)
    served: list[float] = []  # when each normal request came back
    with ThreadPoolExecutor(6) as pool, httpx.Client(base_url=node.url) as http:
        started = time.monotonic()
        slow = [pool.submit(slow_head) for _ in range(5)] + [pool.submit(slow_body)]
        while not all(f.done() for f in slow):
            assert http.get("/health").json() == {"status": "ok"}
            served.append(time.monotonic())
            reply = client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert reply.usage.completion_tokens > 0
            served.append(time.monotonic())
        answers = [f.result() for f in slow]
    client.close()

    for answer in answers:
        assert answer.closed
        assert TIMEOUT - 0.05 <= answer.first_byte_after <= TIMEOUT + SLACK, answer
        assert answer.status == 408 and answer.headers["connection"] == "close"
        assert answer.headers["content-type"] == "application/json"
        assert answer.error["code"] == "request_timeout"
    assert "headers" in answers[0].error["message"] and "body" in answers[5].error["message"]
    first_drop = started + min(a.first_byte_after for a in answers)
    assert sum(t < first_drop for t in served) >= 2, "no normal request while slow ones held"


def test_a_silent_connection_is_closed_after_the_header_timeout(node: Node) -> None:
    started = time.monotonic()
    sock = node.connect()
    assert sock.recv(1024) == b""  # closed, nothing to answer: no request was made
    assert TIMEOUT - 0.05 <= time.monotonic() - started <= TIMEOUT + SLACK


def test_keep_alive_serves_several_requests_and_times_out_a_trickled_next_one(
    node: Node,
) -> None:
    sock = node.connect()
    for _ in range(3):  # one connection, three answers
        health(sock)
    answer = exchange(sock, SLOW_HEAD, step=0.1)  # the clock starts at its first bytes
    assert answer.status == 408 and answer.error["code"] == "request_timeout"
    assert TIMEOUT - 0.05 <= answer.first_byte_after <= TIMEOUT + SLACK


def health(sock: socket.socket) -> None:
    """One GET /health on a kept-alive connection."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(4096)
        assert chunk, "keep-alive connection closed"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_malformed_request_after_a_kept_alive_one_still_gets_its_error(node: Node) -> None:
    sock = node.connect()
    health(sock)
    answer = exchange(sock, b"GET http://node:99999999/ HTTP/1.1\r\nHost: node\r\n\r\n")
    assert answer.status == 400 and answer.error["code"] == "invalid_http_request"


def test_a_client_that_reads_nothing_is_dropped_after_the_write_timeout(node: Node) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.connect((node.host, node.port))
    started = time.monotonic()
    sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: node\r\n\r\n" * 1000)  # ~14 MB due
    hangup = select.poll()
    hangup.register(sock, select.POLLRDHUP)  # POLLERR and POLLHUP always: the server's abort
    events = hangup.poll((TIMEOUT + SLACK) * 1000)
    elapsed = time.monotonic() - started
    sock.close()
    assert events and events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLRDHUP)
    assert TIMEOUT - 0.05 <= elapsed <= TIMEOUT + SLACK


LINE = b"GET /health HTTP/1.1\r\nHost: node\r\n"
KIB = 1024


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"GET /" + b"a" * 100 * KIB + b" HTTP/1.1\r\nHost: node\r\n\r\n", 414, "uri_too_long"),
        (LINE + b"X-Big: " + b"b" * MAX_HEADER_KB * KIB + b"\r\n\r\n", 431, None),
        (LINE + b"X-Big: " + b"b" * 400 * KIB, 431, None),  # never ends: bounded while read
        (LINE + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n", 431, None),
        (b"GET /h\xc3\xa9alth HTTP/1.1\r\nHost: node\r\n\r\n", 400, "invalid_http_request"),
        (LINE + b"X-Bin: \x01\x02\r\n\r\n", 400, "invalid_http_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 8, 400, "invalid_http_request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "invalid_http_request"),
        (LINE + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, None),
    ],
    ids=[
        "100KB-request-line",
        "big-header",
        "endless-header",
        "too-many-headers",
        "non-ascii-path",
        "control-bytes-in-header",
        "tls-hello",
        "http2-preface",
        "length-and-chunked",
    ],
)
def test_malformed_heads_get_openai_shaped_errors(
    node: Node, payload: bytes, status: int, code: str | None
) -> None:
    answer = exchange(node.connect(), payload, half_close=True)
    assert answer.closed and answer.status == status, answer.raw[:200]
    assert answer.headers["content-type"] == "application/json"
    assert answer.error["type"] == "invalid_request_error"
    if code is not None:
        assert answer.error["code"] == code
    elif status == 431:
        assert answer.error["code"] in {"request_header_fields_too_large", "too_many_headers"}


def test_a_body_over_the_limit_is_answered_at_once_and_the_connection_is_kept(
    node: Node,
) -> None:
    size = 2 * MAX_BODY_MB * 1024 * KIB
    sock = node.connect()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\nContent-Length: %d\r\n\r\n" % size
    )
    head = b""
    while not head.endswith(b"}}"):  # before a byte of the body: known from Content-Length
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 413 ") and b"request_too_large" in head
    sock.sendall(b"x" * size)  # read and dropped by the server
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
    answer = exchange(sock, b"")
    assert answer.raw.startswith(b"HTTP/1.1 200 ") and answer.raw.endswith(b'{"status":"ok"}')


def test_one_connection_too_many_gets_503_and_a_freed_one_is_reused(node: Node) -> None:
    held: list[socket.socket] = []
    try:
        while len(held) <= MAX_CONNECTIONS:  # each proven open by an answer, then kept idle
            sock = node.connect()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n")
            reply = sock.recv(4096)
            if not reply.startswith(b"HTTP/1.1 200 "):
                sock.close()
                break
            held.append(sock)
        assert len(held) == MAX_CONNECTIONS
        answer = exchange(node.connect(), b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n")
        assert answer.status == 503 and answer.headers["retry-after"] == "1"
        assert answer.error == {
            "message": "The server has too many open connections; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "too_many_connections",
        }
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10  # the server sees the closes when it reads their FINs
    while httpx.get(f"{node.url}/health").status_code != 200:
        assert time.monotonic() < deadline


@pytest.mark.parametrize(
    "flag",
    [
        ["--header-timeout", "0"],
        ["--body-timeout", "-1"],
        ["--write-timeout", "0"],
        ["--max-header-kb", "0"],
        ["--max-headers", "0"],
        ["--max-connections", "0"],
    ],
)
def test_serve_refuses_limits_that_make_no_sense(flag: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(node_cli, ["serve", "--db", str(tmp_path / "m.db"), *flag])
    assert result.exit_code == 2 and flag[0] in result.output
