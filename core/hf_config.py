"""The model section of a Hugging Face-format checkpoint folder, derived from its config.json.

`pypto ... --model PATH` (model.path) points at a folder with config.json, *.safetensors and
the tokenizer files. Its shape (layers, widths, heads, experts, vocab, rope, norm epsilon,
tied embeddings) is read from config.json here, once, so it is never typed twice; the layout
rules then check it like any other model section. Pure Python (json only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError, ConfigIssue

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM",
                           "Qwen2MoeForCausalLM")
"""Architectures (config.json `architectures[0]`) the plain model runs."""

MAX_CONFIG_BYTES = 1 << 20
"""A config.json larger than this is not a model config."""

OVERRIDABLE = frozenset(("name", "dtype", "max_seq_len"))
"""Model fields a config may set next to model.path (max_seq_len only lower than the
checkpoint's max_position_embeddings); every other field comes from config.json."""

_DTYPES = {"float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
           "bfloat16": "bfloat16"}


def _fail(path: object, message: str) -> ConfigError:
    return ConfigError(ConfigIssue("path", str(path), message))


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint folder as a dict, or a ConfigError naming model.path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(folder, "not a directory; point model.path (--model) at a Hugging Face "
                            "checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    file = folder / "config.json"
    if not file.is_file():
        raise _fail(folder, "has no config.json; a Hugging Face checkpoint folder holds "
                            "config.json, *.safetensors and tokenizer.json")
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise _fail(folder, f"config.json is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(folder, f"config.json is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _fail(folder, "config.json must hold a JSON object")
    return data


def model_fields_from_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The ModelSpec fields config.json implies (raises ConfigError for an unsupported or
    malformed config, naming the key and what is supported)."""
    cfg = read_hf_config(folder)
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _fail(folder, f"config.json architecture {arch!r} is not supported; supported: "
                            + ", ".join(SUPPORTED_ARCHITECTURES))

    def need(key: str, default: Any = None, kind: type | tuple = int) -> Any:
        value = cfg.get(key, default)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise _fail(folder, f"config.json key {key!r} must be "
                                f"{'an integer' if kind is int else 'a number'}, got {value!r}")
        return value

    hidden, heads = need("hidden_size"), need("num_attention_heads")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and heads and head_dim * heads != hidden:
        raise _fail(folder, f"config.json head_dim={head_dim} differs from hidden_size / "
                            f"num_attention_heads = {hidden} / {heads}; such models are not "
                            "supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise _fail(folder, f"config.json hidden_act={cfg.get('hidden_act')!r} is not "
                            "supported (silu only)")
    if cfg.get("mlp_bias"):
        raise _fail(folder, "config.json mlp_bias=true is not supported")
    max_pos = need("max_position_embeddings", 2048)
    theta, scaling = _rope(folder, cfg)
    fields: dict[str, Any] = {
        "name": Path(folder).resolve().name,
        "architecture": arch,
        "num_layers": need("num_hidden_layers"),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": need("num_key_value_heads", heads),
        "intermediate_size": need("intermediate_size"),
        "num_experts": 0,
        "vocab_size": need("vocab_size"),
        "max_seq_len": _window(folder, cfg, arch, max_pos),
        "rope_theta": float(theta),
        "rope_scaling": scaling,
        "rms_norm_eps": float(need("rms_norm_eps", 1e-6, (int, float))),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": _qkv_bias(folder, cfg, arch),
        "dtype": _DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
                             "float32"),
    }
    if arch == "MixtralForCausalLM":
        fields.update(num_experts=need("num_local_experts"),
                      experts_per_token=need("num_experts_per_tok"), moe_renormalize=True)
    elif arch == "Qwen2MoeForCausalLM":
        if need("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
            raise _fail(folder, "config.json mixes dense and MoE layers (decoder_sparse_step "
                                "!= 1 or mlp_only_layers); only all-MoE Qwen2-MoE is supported")
        fields.update(num_experts=need("num_experts"),
                      experts_per_token=need("num_experts_per_tok"),
                      intermediate_size=need("moe_intermediate_size"),
                      shared_expert_intermediate_size=need("shared_expert_intermediate_size", 0),
                      moe_renormalize=bool(cfg.get("norm_topk_prob", False)))
    return fields


def _qkv_bias(folder: str | Path, cfg: dict[str, Any], arch: str) -> bool:
    """Biases on the q/k/v projections: always in Qwen2, `qkv_bias` in Qwen2-MoE. Llama's
    attention_bias also puts one on o_proj, which is not supported."""
    if arch == "Qwen2ForCausalLM":
        return True
    if arch == "Qwen2MoeForCausalLM":
        return bool(cfg.get("qkv_bias", True))
    if cfg.get("attention_bias"):
        raise _fail(folder, "config.json attention_bias=true (a bias on o_proj too) is not "
                            "supported")
    return False


def _rope(folder: str | Path, cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from the legacy keys (rope_theta, rope_scaling) or transformers 5's
    rope_parameters; scaling is None (plain), linear or llama3, anything else is refused."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        theta, scaling = params.get("rope_theta", cfg.get("rope_theta", 10000.0)), params
    else:
        theta, scaling = cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise _fail(folder, f"config.json rope_theta must be a positive number, got {theta!r}")
    if not scaling:
        return theta, None
    if not isinstance(scaling, dict):
        raise _fail(folder, f"config.json rope_scaling must be an object, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    keys = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}
    if kind not in keys:
        raise _fail(folder, f"config.json rope scaling type {kind!r} is not supported; "
                            "supported: default, linear, llama3")
    out: dict[str, Any] = {"rope_type": kind}
    for key in keys[kind]:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(folder, f"config.json rope scaling {key!r} must be a number, "
                                f"got {value!r}")
        out[key] = int(value) if key == "original_max_position_embeddings" else float(value)
    return theta, out


def _window(folder: str | Path, cfg: dict[str, Any], arch: str, max_pos: int) -> int:
    """The longest sequence served: max_position_embeddings, capped at a sliding window (up to
    its width sliding-window attention is plain causal attention)."""
    window = cfg.get("sliding_window")
    if arch == "Qwen2ForCausalLM" or arch == "Qwen2MoeForCausalLM":
        window = window if cfg.get("use_sliding_window") else None
    if window is None or window == 0:
        return max_pos
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise _fail(folder, f"config.json sliding_window must be an integer, got {window!r}")
    return min(max_pos, window)


def merge_model_section(data: dict[str, Any]) -> dict[str, Any]:
    """A model section with model.path filled in from config.json; raises ConfigError when a
    field given beside the path disagrees with the checkpoint (it must not be typed twice)."""
    derived = model_fields_from_checkpoint(data["path"])
    issues = []
    for key, value in data.items():
        if key == "path" or key not in derived:
            continue
        if key == "max_seq_len":
            if isinstance(value, int) and not isinstance(value, bool) \
                    and value > derived["max_seq_len"]:
                issues.append(ConfigIssue(
                    key, value, f"longer than the checkpoint's {derived['max_seq_len']} "
                                "positions; use at most that, or leave it out", ("path",)))
            continue
        if key in OVERRIDABLE or value == derived[key]:
            continue
        issues.append(ConfigIssue(
            key, value, f"model.path's config.json says {derived[key]!r}; leave it out "
                        "(the checkpoint defines it)", ("path",)))
    if issues:
        raise ConfigError(issues)
    return {**derived, **data}
