"""Checking `llm-node` command lines against the CLI's own click parser, without running them.

Used by the README and Dockerfile tests: documentation and the image's CMD must name commands,
options and arguments that exist, with values the parser accepts.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

import click

from node.cli import cli

PROGRAM = "llm-node"
# Shell operators that end one simple command (shlex's punctuation tokens).
_OPERATORS = {"&&", "||", "|", ";", "&", "(", ")", ";;", "|&"}
# `docker run` / `docker exec` options that take a separate value.
_DOCKER_VALUE_OPTIONS = {
    "-p",
    "--publish",
    "-v",
    "--volume",
    "-e",
    "--env",
    "--env-file",
    "--name",
    "--gpus",
    "--restart",
    "--mount",
    "-u",
    "--user",
    "-w",
    "--workdir",
    "--network",
    "--cpus",
    "-m",
    "--memory",
    "--shm-size",
    "--ulimit",
    "-l",
    "--label",
    "--log-driver",
}


@dataclass(frozen=True)
class Invocation:
    """One `llm-node` command line found in a document: its arguments and where it came from."""

    args: tuple[str, ...]
    source: str

    def __str__(self) -> str:
        return f"{self.source}: llm-node {shlex.join(self.args)}"


def fenced_blocks(markdown: str) -> Iterator[tuple[int, str, str]]:
    """(first line number, info string, body) of every ``` fenced block."""
    pattern = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
    for match in pattern.finditer(markdown):
        line = markdown.count("\n", 0, match.start(2)) + 1
        yield line, match.group(1).strip(), match.group(2)


def shell_lines(body: str) -> Iterator[tuple[int, str]]:
    """Logical shell lines (backslash continuations joined, `$ ` prompts dropped), 0-based."""
    pending = ""
    start = 0
    for number, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if not pending:
            start = number
            line = re.sub(r"^\s*\$ ", "", line)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def simple_commands(line: str) -> list[list[str]]:
    """A shell line split into its simple commands (at `&&`, `|`, `;`, `$(`, ...)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _is_program(token: str) -> bool:
    return token.rsplit("/", 1)[-1] == PROGRAM


def _after_docker_options(tokens: list[str]) -> tuple[str | None, list[str]]:
    """Skip `docker run|exec` options: (the first operand, the tokens after it)."""
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in _DOCKER_VALUE_OPTIONS:
            index += 2
        elif token.startswith("-"):
            index += 1
        else:
            return token, tokens[index + 1 :]
    return None, []


def llm_node_args(command: list[str]) -> list[str] | None:
    """The arguments given to llm-node by one simple command, or None if it does not run it.

    `docker exec NAME llm-node ...` runs it in a container; `docker run ... llm-node:TAG ARGS`
    passes ARGS to the image's `llm-node` entrypoint (no ARGS: the image's CMD, checked apart).
    """
    if command[:2] == ["docker", "exec"]:
        _container, rest = _after_docker_options(command[2:])
        return rest[1:] if rest and _is_program(rest[0]) else None
    if command[:2] == ["docker", "run"]:
        image, rest = _after_docker_options(command[2:])
        if image is None or not image.split(":")[0].endswith(PROGRAM):
            raise AssertionError(f"cannot find the llm-node image in {shlex.join(command)!r}")
        return rest or None
    for index, token in enumerate(command):
        if _is_program(token) and not token.startswith("-"):
            return command[index + 1 :]
    return None


def invocations(markdown: str, source: str) -> list[Invocation]:
    """Every llm-node command line in the document's shell code blocks."""
    found: list[Invocation] = []
    for first_line, info, body in fenced_blocks(markdown):
        if info not in ("", "bash", "sh", "shell", "console"):
            continue
        for offset, line in shell_lines(body):
            for command in simple_commands(line):
                args = llm_node_args(command)
                if args is not None:
                    where = f"{source}:{first_line + offset}"
                    found.append(Invocation(tuple(args), where))
    return found


def parse(args: list[str] | tuple[str, ...]) -> click.Command:
    """Parse a command line with the CLI's click parser, strictly; return the leaf command.

    Raises click.UsageError (or BadParameter) for an unknown command or option, a missing
    argument or a value the parser refuses. Nothing is executed: only `make_context`.
    """
    command: click.Command = cli
    name = PROGRAM
    parent: click.Context | None = None
    remaining = list(args)
    while True:
        try:
            ctx = command.make_context(name, list(remaining), parent=parent)
        except click.exceptions.Exit as exc:  # --help / --version: a valid line
            if exc.exit_code != 0:
                raise
            return command
        if not isinstance(command, click.Group):
            return command
        protected = getattr(ctx, "_protected_args", None)  # `protected_args` is deprecated
        rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
        if not rest:
            raise click.UsageError(f"{name}: missing command", ctx=ctx)
        sub_name, sub, remaining = command.resolve_command(ctx, rest)
        assert sub is not None and sub_name is not None
        command, name, parent = sub, sub_name, ctx


def all_commands(command: click.Command = cli) -> Iterator[click.Command]:
    """The command and every command below it."""
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from all_commands(sub)


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def envvars(option: click.Option) -> set[str]:
    value = option.envvar
    if not value:
        return set()
    return {value} if isinstance(value, str) else set(value)
