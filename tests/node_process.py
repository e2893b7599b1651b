"""`llm-node serve` in its own process on the real SmolLM2 GGUF, with a CLI-made meter: what the
end-to-end, fuzz, crash-safety and soak tests start."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from node.config import embedded_model_path
from tests.api_fixtures import free_port

CHAT_ID = "smollm2-135m"
EMBED_ID = "smollm2-135m-embed"
N_CTX_PER_SEQ = 512
N_EMBD = 576  # SmolLM2-135M
LLM_NODE = str(Path(sys.executable).with_name("llm-node"))


def cli(db: Path, *args: str) -> str:
    done = subprocess.run(
        [LLM_NODE, *args, "--db", str(db)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def write_registry(tmp: Path, *, parallel: int = 4, n_ctx_per_seq: int = N_CTX_PER_SEQ) -> Path:
    registry = tmp / "models.toml"
    gguf = embedded_model_path()
    registry.write_text(
        f'[[model]]\nid = "{CHAT_ID}"\npath = "{gguf}"\nn_ctx = {n_ctx_per_seq * parallel}\n'
        f"parallel = {parallel}\nn_threads = 1\n\n"
        f'[[model]]\nid = "{EMBED_ID}"\npath = "{gguf}"\nn_ctx = 512\nparallel = 1\n'
        f"embeddings = true\nn_threads = 1\n"
    )
    return registry


def start_server(
    tmp: Path,
    db: Path,
    *,
    port: int | None = None,
    parallel: int = 4,
    n_ctx_per_seq: int = N_CTX_PER_SEQ,
    extra: tuple[str, ...] = (),
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the node (`extra`: more `serve` flags) and wait until `/health` says every model is
    loaded."""
    registry = write_registry(tmp, parallel=parallel, n_ctx_per_seq=n_ctx_per_seq)
    return launch_server(tmp, db, registry, port=port, extra=extra)


def launch_server(
    tmp: Path,
    db: Path,
    registry: Path,
    *,
    port: int | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[str, subprocess.Popen[bytes]]:
    """`llm-node serve` on this registry, logging to `tmp/server.log`; returns once `/health`
    says every model is loaded."""
    port = port or free_port()
    log = open(tmp / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [LLM_NODE, "serve", "--port", str(port), "--models", str(registry), "--db", str(db),
         "--gpu-type", "testgpu", *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp / "server.log").read_text()
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not become ready: " + (tmp / "server.log").read_text())


def stop_server(process: subprocess.Popen[bytes]) -> None:
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
