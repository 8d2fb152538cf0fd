"""The checkpoint's tokenizer and chat template equal transformers' on the same folder, and
load without torch (the router uses them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pypto_serving.engine.hf_tokenizer import ChatTemplateError, HFTokenizer, load_tokenizer
from pypto_serving.engine.tokenizer import ByteTokenizer, Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hello, world! How are you today?"}],
    [{"role": "system", "content": "You answer briefly."},
     {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And of Spain? ünïcödé 中文"}],
]
TEXTS = ["The quick brown fox", "  spaces\tand\nnewlines ", "ünïcödé 中文 🙂", ""]


@pytest.fixture(scope="module")
def folder(hf_checkpoints):
    return hf_checkpoints["llama"]


@pytest.fixture(scope="module")
def hf_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_encode_decode_equal_transformers(folder, hf_tokenizer):
    ours = HFTokenizer(folder)
    assert isinstance(ours, Tokenizer)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf_tokenizer.encode(text)
        assert ours.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert ours.vocab_size == len(hf_tokenizer)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(folder, hf_tokenizer, add_generation_prompt):
    ours = HFTokenizer(folder)
    for messages in CONVERSATIONS:
        text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        assert text == hf_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                               add_generation_prompt=add_generation_prompt)
        assert ours.encode_chat(messages, add_generation_prompt) == list(ids)
    assert text.startswith("<|begin_of_text|>")  # the template read bos_token


def test_stop_tokens_from_generation_config(folder, hf_tokenizer):
    ours = HFTokenizer(folder)
    assert ours.stop_token_ids == (1, 3)  # <|end_of_text|>, <|im_end|>
    assert ours.eos_token_id == 3  # tokenizer_config's eos_token, a chat turn's end
    assert hf_tokenizer.convert_ids_to_tokens([1, 3]) == ["<|end_of_text|>", "<|im_end|>"]


def test_stop_tokens_fall_back_as_transformers_generate_does(folder, tmp_path):
    """No generation_config.json: config.json's eos_token_id (transformers builds its
    generation config from it), not the tokenizer's eos_token; neither: the eos_token."""
    import shutil

    from transformers import GenerationConfig, PretrainedConfig

    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "generation_config.json").unlink()
    want = GenerationConfig.from_model_config(PretrainedConfig.from_pretrained(bare))
    assert HFTokenizer(bare).stop_token_ids == (want.eos_token_id,) == (1,)
    config = json.loads((bare / "config.json").read_text())
    del config["eos_token_id"]
    (bare / "config.json").write_text(json.dumps(config))
    assert HFTokenizer(bare).stop_token_ids == (3,)  # <|im_end|>, tokenizer_config's


def test_template_errors_are_named(folder, tmp_path):
    ours = HFTokenizer(folder)
    ours.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ours.apply_chat_template(CONVERSATIONS[0])
    ours.chat_template, ours._template = None, None
    with pytest.raises(ChatTemplateError, match="no chat_template"):
        ours.apply_chat_template(CONVERSATIONS[0])


def test_load_tokenizer_picks_by_model_path_without_torch(folder):
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    code = ("import sys; from pypto_serving.engine.hf_tokenizer import load_tokenizer; "
            f"t = load_tokenizer({str(folder)!r}); print(t.encode('Hello')); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(HFTokenizer(folder).encode("Hello"))
