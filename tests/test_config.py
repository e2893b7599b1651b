"""The model registry: parsing, one-line errors, the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import (
    EMBEDDED_CHAT_ID,
    EMBEDDED_EMBED_ID,
    RegistryError,
    load_registry,
    resolve_models,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_registry_resolves_relative_paths_and_defaults(tmp_path: Path, default_gguf: Path) -> None:
    (tmp_path / "m.gguf").symlink_to(default_gguf)
    path = write(tmp_path, '[[model]]\nid = "a"\npath = "m.gguf"\nparallel = 2\nalias = ["b"]\n')
    [spec] = load_registry(path)
    assert spec.path == (tmp_path / "m.gguf").resolve()
    assert (spec.parallel, spec.n_ctx, spec.n_gpu_layers, spec.embeddings) == (2, 8192, -1, False)
    assert spec.names == ("a", "b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[model]]\nid = "a"\npath = "m.gguf"\ncolour = 1\n', "model[1].colour: Extra inputs"),
        ('[[model]]\nid = "a"\npath = "m.gguf"\nn_ctx = "big"\n', "model[1].n_ctx: Input should"),
        ('[[model]]\nid = "a"\n', "model[1].path: Field required"),
        ('[[model]]\nid = "a"\npath = "missing.gguf"\n', "model[1].path: GGUF file not found"),
        ("[[model]\n", "invalid TOML"),
        (
            '[[model]]\nid = "a"\npath = "m.gguf"\n[[model]]\nid = "a"\npath = "m.gguf"\n',
            "duplicate",
        ),
    ],
)
def test_bad_registry_is_one_line_naming_file_and_field(
    tmp_path: Path, default_gguf: Path, text: str, expected: str
) -> None:
    (tmp_path / "m.gguf").symlink_to(default_gguf)
    path = write(tmp_path, text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert expected in message


def test_registry_without_models_serves_the_embedded_default(tmp_path: Path) -> None:
    specs = resolve_models(write(tmp_path, "# nothing yet\n"))
    assert [(s.id, s.embeddings) for s in specs] == [
        (EMBEDDED_CHAT_ID, False),
        (EMBEDDED_EMBED_ID, True),
    ]
    assert specs[0].path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_named_registry_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="registry file not found"):
        resolve_models(tmp_path / "nope.toml")


def test_tool_format_names_a_known_format(tmp_path: Path, default_gguf: Path) -> None:
    (tmp_path / "m.gguf").symlink_to(default_gguf)
    good = write(tmp_path, '[[model]]\nid = "a"\npath = "m.gguf"\ntool_format = "hermes"\n')
    assert load_registry(good)[0].tool_format == "hermes"
    bad = write(tmp_path, '[[model]]\nid = "a"\npath = "m.gguf"\ntool_format = "smoke"\n')
    with pytest.raises(RegistryError, match=r"model\[1\]\.tool_format: .*unknown tool format"):
        load_registry(bad)
