"""`pypto model make-tiny`: a small random checkpoint in the Hugging Face layout, offline.

config.json for one of the supported architectures, model.safetensors with random weights
from a fixed seed under the on-disk names (core/checkpoint.py), a byte-level BPE tokenizer
trained here with `tokenizers` on a built-in text, tokenizer_config.json with a ChatML chat
template, and generation_config.json. Same seed, same bytes: tests and users see one model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..core.checkpoint import full_shapes, weight_names
from ..core.hf_config import model_fields_from_checkpoint

ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
         "mixtral": "MixtralForCausalLM", "qwen2-moe": "Qwen2MoeForCausalLM"}

VOCAB_SIZE = 384
"""The tiny models' vocabulary (the tokenizer is trained up to it)."""

BOS, EOS, IM_START, IM_END = "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (BOS, EOS, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, with the BOS token first (the template reads bos_token, as Llama's do)."""

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A serving system loads a model, splits it over
devices and answers requests. Tensor parallelism splits each layer's heads and columns;
pipeline parallelism cuts the stack of layers into stages; expert parallelism places whole
experts on different ranks; data parallelism runs independent replicas behind a router.
Hello, world! How are you today? I am fine, thank you. What is the capital of France? Paris.
The user asks a question and the assistant answers it. Tokens are generated one at a time.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } " ' - _ / .
"""


def hf_config(arch: str) -> dict[str, Any]:
    """config.json of the tiny model of `arch` (llama, qwen2, mixtral, qwen2-moe)."""
    common: dict[str, Any] = {
        "architectures": [ARCHS[arch]], "hidden_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "vocab_size": VOCAB_SIZE, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1,
        "tie_word_embeddings": False, "rope_theta": 10000.0,
    }
    if arch == "llama":
        common.update(model_type="llama", tie_word_embeddings=True, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64})
    elif arch == "qwen2":
        common.update(model_type="qwen2", use_sliding_window=False, rope_theta=1000000.0)
    elif arch == "mixtral":
        common.update(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2,
                      sliding_window=None, rope_theta=1000000.0)
    else:
        common.update(model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=64, shared_expert_intermediate_size=128,
                      norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
                      use_sliding_window=False, qkv_bias=True)
    return common


def random_weights(spec, seed: int) -> dict[str, torch.Tensor]:
    """On-disk name -> random tensor: linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1),
    norms ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), from one generator in name order."""
    gen = torch.Generator().manual_seed(seed)
    shapes, out = full_shapes(spec), {}
    for ours, disk in sorted(weight_names(spec).items()):
        if disk in out:  # tied embeddings: the head is the table
            continue
        noise = torch.randn(shapes[ours], generator=gen)
        if ours.endswith("norm.weight"):
            noise = 1.0 + 0.1 * noise
        elif ours.endswith(".bias"):
            noise = 0.1 * noise
        elif "tok_embeddings" not in ours:
            noise = noise / math.sqrt(shapes[ours][-1])
        out[disk] = noise.contiguous()
    return out


def train_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on TRAINING_TEXT, special tokens first (ids 0-3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAINING_TEXT.splitlines(), trainer)
    return tok


def write_tokenizer(folder: Path) -> None:
    """tokenizer.json, tokenizer_config.json (chat template) and generation_config.json."""
    train_tokenizer().save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": IM_END,
        "pad_token": EOS, "chat_template": CHAT_TEMPLATE, "add_bos_token": False,
        "model_max_length": 512, "clean_up_tokenization_spaces": False})
    _write_json(folder / "generation_config.json", {
        "bos_token_id": 0, "eos_token_id": [1, 3], "do_sample": False})


def make_tiny(arch: str, folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny `arch` checkpoint (config, weights, tokenizer) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", hf_config(arch))
    write_tokenizer(folder)
    from ..core.config import ModelSpec

    spec = ModelSpec.model_validate(model_fields_from_checkpoint(folder))
    save_file(random_weights(spec, seed), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
