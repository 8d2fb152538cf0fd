"""Tiny random Hugging Face models built by transformers itself (offline, from a config) and
saved with save_pretrained, plus our tiny tokenizer files: the checkpoints the tests load.

Imported by name (pyproject puts tests/checkpoints on pytest's pythonpath).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pypto_serving.executor.tiny_checkpoint import VOCAB_SIZE, write_tokenizer

ARCHS = ("llama", "qwen2", "mixtral", "qwen2-moe")
MOE_ARCHS = ("mixtral", "qwen2-moe")
NUM_EXPERTS = 6
"""Experts per MoE layer: over EP 4 the linear ([0,1] [2,3] [4] [5]) and round-robin
([0,4] [1,5] [2] [3]) placements differ, and two ranks hold fewer experts than the others."""

_COMMON = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=0,
               eos_token_id=1)


def hf_config(arch: str):
    """A transformers config of `arch` exercising its switches (Llama: llama3 rope scaling and
    tied embeddings; Qwen2: q/k/v biases; Mixtral: renormalized top-2; Qwen2-MoE: a shared
    expert with its gate, top-k weights not renormalized)."""
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**_COMMON, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32})
    if arch == "qwen2":
        return tf.Qwen2Config(**_COMMON, tie_word_embeddings=False)
    if arch == "mixtral":
        return tf.MixtralConfig(**_COMMON, num_local_experts=NUM_EXPERTS, num_experts_per_tok=2,
                                sliding_window=None)
    return tf.Qwen2MoeConfig(**{**_COMMON, "intermediate_size": 96}, num_experts=NUM_EXPERTS,
                             num_experts_per_tok=2, moe_intermediate_size=64,
                             shared_expert_intermediate_size=128, norm_topk_prob=False,
                             tie_word_embeddings=False)


@torch.no_grad()
def build_hf_model(arch: str, seed: int = 0):
    """The transformers model of `arch` with O(1)-scale random weights (linear ~ N(0,
    1/fan_in), embeddings ~ N(0, 0.3^2), norms ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2)), so
    logits spread enough for stable greedy tokens; fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "norm" in name:
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith("bias"):
            p.copy_(0.1 * noise)
        elif "embed_tokens" in name:  # small: a tied head would echo the input token
            p.copy_(0.3 * noise)
        else:
            p.copy_(noise / math.sqrt(p.shape[-1]))
    return model.eval()


def save_hf_checkpoint(arch: str, folder: Path, max_shard_size: str | None = None):
    """Save the model (sharded with an index when `max_shard_size`) and tokenizer files."""
    model = build_hf_model(arch)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    write_tokenizer(folder)
    return model


PROMPTS = [[5, 17, 33, 100, 7, 250, 9], [40, 41, 42]]
STEPS = 32


@torch.no_grad()
def hf_greedy(model, prompts: list[list[int]], steps: int = STEPS):
    """transformers' greedy tokens of each prompt (generate, no EOS stop) and, per step, the
    logits [prompts, vocab] that chose them (one forward over prompt + generated tokens)."""
    tokens, logits = [], []
    for p in prompts:
        out = model.generate(torch.tensor([p]), max_new_tokens=steps, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        tokens.append(out)
        full = model(torch.tensor([p + out])).logits[0]
        logits.append(full[len(p) - 1: len(p) - 1 + steps])
    return tokens, [torch.stack([lg[s] for lg in logits]) for s in range(steps)]


def max_rel_err(got, want) -> float:
    """max |got - want| / max |want| over one step's logits."""
    return float((got - want).abs().max() / want.abs().max())
