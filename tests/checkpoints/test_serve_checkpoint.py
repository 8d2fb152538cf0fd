"""`pypto serve --model DIR` on a make-tiny checkpoint under TP 2, through the official openai
client: chat completions equal transformers' greedy generate with the checkpoint's own chat
template and stop token, completions too; Ctrl-C leaves no process."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny("mixtral", tmp_path_factory.mktemp("serve") / "tiny-mixtral")


@pytest.fixture(scope="module")
def served(tiny):
    s = ServeProcess("--model", str(tiny), "-tp", "2", "--platform", "cpu", replicas=1)
    yield s
    if s.proc.poll() is None:
        s.kill_all()


def test_chat_and_completions_equal_transformers_greedy(tiny, served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0,
                           timeout=120)
    for messages in CHATS:
        got = client.chat.completions.create(model="tiny-mixtral", messages=messages,
                                             max_tokens=24, temperature=0)
        enc = tok.apply_chat_template(messages, add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=24, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        assert got.usage.prompt_tokens == enc["input_ids"].shape[1]
        assert got.usage.completion_tokens == len(new)
        assert got.choices[0].message.content == tok.decode(new, skip_special_tokens=True)
    prompt = "The quick brown fox"
    got = client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=16,
                                    temperature=0)
    ids = tok(prompt, return_tensors="pt")
    new = model.generate(**ids, max_new_tokens=16, do_sample=False, eos_token_id=None
                         )[0, ids["input_ids"].shape[1]:].tolist()
    assert got.choices[0].text == tok.decode(new, skip_special_tokens=True)


def test_ctrl_c_leaves_no_process(served):
    tree = served.tree()
    assert served.interrupt() == 0
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive
