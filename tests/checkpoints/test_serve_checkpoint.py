"""`pypto serve --model DIR` on a make-tiny checkpoint of each architecture (one rank, TP 2,
TP 2 with EP 2), through the official openai client: chat completions equal transformers'
greedy generate with the checkpoint's own chat template and end-of-sequence ids, completions
too; every id of generation_config.json's eos_token_id list stops a request, as in generate;
Ctrl-C leaves no process."""

from __future__ import annotations

import json

import openai
import psutil
import pytest
import torch
from serve_harness import ServeProcess

from pypto_serving.executor.tiny_checkpoint import make_tiny

CHATS = [
    [{"role": "user", "content": "Hello, world! How are you today?"}],
    [{"role": "system", "content": "You answer briefly."},
     {"role": "user", "content": "What is the capital of France?"}],
]
PROMPT = "The quick brown fox"
MAX_TOKENS = 16
LAYOUTS = {"llama": ("-tp", "2"), "qwen2": (), "mixtral": ("-tp", "2"),
           "qwen2-moe": ("-tp", "2", "--enable-expert-parallel")}
"""Each architecture under one layout: one rank, TP 2 (Mixtral's experts TP-sharded), and EP
over TP 2 (Qwen2-MoE's experts split between the ranks)."""


def _reference(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(folder),
            AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval())


def _add_stop_id_greedy_hits(folder) -> int:
    """Append to generation_config.json's eos_token_id a token that transformers' greedy
    decoding of PROMPT emits (first at a step >= 2, not before): the id that must stop the
    served completion there. Returns the step."""
    tok, model = _reference(folder)
    ids = tok(PROMPT, return_tensors="pt")
    new = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None
                         )[0, ids["input_ids"].shape[1]:].tolist()
    file = folder / "generation_config.json"
    config = json.loads(file.read_text())
    eos = config["eos_token_id"]
    step = next((k for k in range(2, MAX_TOKENS - 2)
                 if new[k] not in new[:k] and new[k] not in eos), None)
    assert step is not None, f"greedy tokens {new} have no fresh token to stop at"
    file.write_text(json.dumps({**config, "eos_token_id": [*eos, new[step]]}))
    return step


@pytest.fixture(scope="module", params=list(LAYOUTS))
def tiny(request, tmp_path_factory):
    """(arch, folder, the step the extra stop id ends PROMPT's completion at)."""
    folder = make_tiny(request.param, tmp_path_factory.mktemp("serve") / f"tiny-{request.param}")
    return request.param, folder, _add_stop_id_greedy_hits(folder)


@pytest.fixture(scope="module")
def served(tiny):
    arch, folder, _ = tiny
    s = ServeProcess("--model", str(folder), *LAYOUTS[arch], "--platform", "cpu", replicas=1)
    yield s
    if s.proc.poll() is None:
        s.kill_all()


def _text(tok, new: list[int], eos: list[int]) -> str:
    """The text a client sees of transformers' new tokens (an ending eos id not shown)."""
    return tok.decode(new[:-1] if new and new[-1] in eos else new, skip_special_tokens=True)


def test_chat_and_completions_equal_transformers_greedy(tiny, served):
    arch, folder, stop_step = tiny
    tok, model = _reference(folder)
    eos = model.generation_config.eos_token_id
    assert isinstance(eos, list) and len(eos) == 3  # [<|end_of_text|>, <|im_end|>, added]
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0,
                           timeout=120)
    name = folder.name
    for messages in CHATS:
        got = client.chat.completions.create(model=name, messages=messages,
                                             max_tokens=24, temperature=0)
        enc = tok.apply_chat_template(messages, add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)  # its eos list
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        assert got.usage.prompt_tokens == enc["input_ids"].shape[1]
        assert got.usage.completion_tokens == len(new)
        assert got.choices[0].message.content == _text(tok, new, eos)
        assert got.choices[0].finish_reason == ("stop" if new[-1] in eos else "length")
    got = client.completions.create(model=name, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                    temperature=0)
    ids = tok(PROMPT, return_tensors="pt")
    new = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False
                         )[0, ids["input_ids"].shape[1]:].tolist()
    assert len(new) == stop_step + 1 and new[-1] == eos[-1]  # generate stopped at the added id
    assert got.choices[0].finish_reason == "stop", arch
    assert got.usage.completion_tokens == stop_step + 1
    assert got.choices[0].text == _text(tok, new, eos)


def test_ctrl_c_leaves_no_process(served):
    tree = served.tree()
    assert served.interrupt() == 0
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive
