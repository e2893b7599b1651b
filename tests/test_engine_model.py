"""Loading GGUF files: facts from metadata, tokenizer, chat template, a Q5_K_M made here."""

from __future__ import annotations

import asyncio
import os

import llama_cpp
import pytest
from engine_support import chat_tokens, collect, greedy

from node.config import ModelSpec
from node.engine.interface import ChatMessage
from node.engine.model import LoadedModel, ModelLoadError, physical_cores, quant_type_name
from node.engine.scheduler import Scheduler


@pytest.fixture(scope="module")
def model(default_gguf):
    loaded = LoadedModel(ModelSpec(id="m", path=default_gguf))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def q5_k_m(default_gguf, tmp_path_factory):
    """A Q5_K_M file requantized from the default Q4_1 model by llama.cpp itself."""
    out = tmp_path_factory.mktemp("gguf") / "smollm2-135m.Q5_K_M.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(default_gguf).encode(), str(out).encode(), params)
    assert rc == 0
    return out


def test_facts_come_from_the_gguf(model, default_gguf):
    assert model.quant_type == "Q4_1"
    assert 130_000_000 < model.n_params < 140_000_000
    assert 0 < model.size_bytes <= default_gguf.stat().st_size
    assert model.n_embd == 576 and model.n_vocab == 49152


def test_quant_type_names_follow_llama_cpp():
    assert quant_type_name(3) == "Q4_1"
    assert quant_type_name(17) == "Q5_K_M"
    assert quant_type_name(0) == "F32" and quant_type_name(1) == "F16"
    assert quant_type_name(17 | 1024) == "Q5_K_M"  # "guessed" flag
    assert quant_type_name(None) == "unknown"


def test_chat_template_from_metadata_renders_special_tokens(model):
    rendered = model.render_chat([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")])
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tokens = model.tokenize(rendered)
    assert tokens[0] == 1 and tokens.count(1) == 3  # <|im_start|> parsed as one special token
    assert 2 in tokens  # <|im_end|>


def test_registry_chat_template_overrides_the_gguf_one(default_gguf):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}>>"
    loaded = LoadedModel(ModelSpec(id="t", path=default_gguf, chat_template=template))
    try:
        assert loaded.render_chat([ChatMessage("user", "yo")]) == "[user] yo\n>>"
    finally:
        loaded.close()


def test_template_errors_become_value_errors(default_gguf):
    template = "{{ raise_exception('only user messages') }}"
    loaded = LoadedModel(ModelSpec(id="t", path=default_gguf, chat_template=template))
    try:
        with pytest.raises(ValueError, match="only user messages"):
            loaded.render_chat([ChatMessage("user", "yo")])
    finally:
        loaded.close()


def test_bos_is_added_only_when_wanted_and_missing(model):
    model.add_bos = True  # SmolLM2 does not want one; check the rule on the real vocabulary
    try:
        assert model.tokenize("hello")[0] == model.bos
        assert model.tokenize("<|im_start|>hello").count(model.bos) == 1
    finally:
        model.add_bos = False
    assert model.tokenize("hello")[0] != model.bos


def test_load_reports_progress_up_to_100(default_gguf):
    seen: list[float] = []
    loaded = LoadedModel(ModelSpec(id="p", path=default_gguf), seen.append)
    loaded.close()
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)


def test_missing_or_broken_file_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        LoadedModel(ModelSpec(id="x", path=tmp_path / "nope.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="could not load"):
        LoadedModel(ModelSpec(id="x", path=junk))


def test_default_threads_are_physical_cores_never_more_than_usable_cpus():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_q5_k_m_file_loads_reports_its_type_and_generates(q5_k_m):
    spec = ModelSpec(id="q5", path=q5_k_m, n_ctx=512, parallel=1, n_threads=1)
    engine = Scheduler(LoadedModel(spec))
    try:
        assert engine.info.quant_type == "Q5_K_M"
        tokens = chat_tokens(engine, "What is the capital of France?")
        result = asyncio.run(collect(engine, tokens, greedy(8)))
        assert result.finished.counts.completion_tokens > 0 and result.text.strip()
    finally:
        engine.close()


def test_flash_attention_and_quantized_kv_cache_from_the_spec(default_gguf):
    spec = ModelSpec(
        id="fa",
        path=default_gguf,
        n_ctx=512,
        parallel=2,
        n_threads=1,
        flash_attn=True,
        type_k="q8_0",
        type_v="q8_0",
    )
    engine = Scheduler(LoadedModel(spec))
    try:
        tokens = chat_tokens(engine, "What is the capital of France?")
        result = asyncio.run(collect(engine, tokens, greedy(6)))
        assert result.finished.counts.completion_tokens > 0 and result.text.strip()
    finally:
        engine.close()


def test_quantized_v_cache_without_flash_attention_is_a_clear_load_error(default_gguf):
    spec = ModelSpec(
        id="bad", path=default_gguf, n_ctx=512, parallel=1, type_v="q4_0", flash_attn=False
    )
    model = LoadedModel(spec)
    try:
        with pytest.raises(ModelLoadError, match="flash_attn"):
            Scheduler(model)
    finally:
        model.close()


def test_broken_registry_template_is_a_one_line_load_error(default_gguf):
    spec = ModelSpec(id="t", path=default_gguf, chat_template="{% for x in %}")
    with pytest.raises(ModelLoadError, match="invalid chat template") as info:
        LoadedModel(spec)
    assert "\n" not in str(info.value)
