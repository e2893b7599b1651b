"""TextStream: whole UTF-8 characters only, stop strings never emitted, not even in part."""

from __future__ import annotations

import pytest

from node.config import ModelSpec
from node.engine.model import LoadedModel
from node.engine.text import TextStream


@pytest.fixture(scope="module")
def model(default_gguf):
    loaded = LoadedModel(ModelSpec(id="text", path=default_gguf))
    yield loaded
    loaded.close()


def feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    out = []
    for piece in pieces:
        out.append(stream.feed(piece))
        if stream.stopped:
            return out
    out.append(stream.flush())
    return out


def test_multibyte_characters_split_across_tokens_are_emitted_whole(model):
    text = "Zażółć gęślą jaźń 😀 你好, naïve café ✓"
    pieces = [model.piece(t) for t in model.tokenize(text)]
    # the emoji and CJK characters really are split across byte-level tokens
    assert any(_broken_utf8(p) for p in pieces)
    deltas = feed_all(TextStream(), pieces)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def _broken_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_stop_string_is_cut_and_never_emitted():
    deltas = feed_all(TextStream(("STOP",)), [b"Hello ", b"wor", b"ld S", b"TO", b"P and more"])
    assert "".join(deltas) == "Hello world "
    assert TextStream(("STOP",)).feed(b"xSTOPy") == "x"


def test_partial_stop_string_is_held_back_then_released_when_it_diverges():
    stream = TextStream(("</end>",))
    assert stream.feed(b"a </") == "a "  # "</" could start the stop string: held
    assert stream.feed(b"en") == ""  # "</en" still could
    assert stream.feed(b"try>") == "</entry>"  # diverged: released in full
    assert not stream.stopped


def test_held_text_is_flushed_at_the_end_of_generation():
    stream = TextStream(("###",))
    assert stream.feed(b"answer #") == "answer "
    assert stream.flush() == "#"


def test_earliest_of_several_stop_strings_wins():
    stream = TextStream(("world", "lo w"))
    assert stream.feed(b"hello world") == "hel"
    assert stream.stopped


def test_unfinished_multibyte_character_at_the_end_is_dropped():
    stream = TextStream()
    assert stream.feed(b"ok " + "😀".encode()[:2]) == "ok "
    assert stream.flush() == ""
