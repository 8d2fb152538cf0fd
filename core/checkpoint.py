"""Where each weight of the plain model lives in a Hugging Face checkpoint, and checking that
it is there with the right shape before anything loads.

One small table per architecture maps the plain model's parameter names (executor/model.py:
`layers.{L}.attention.wq.weight`, ...) to the on-disk names (`model.layers.{L}.self_attn.
q_proj.weight`, per-expert tensors for Mixtral and Qwen2-MoE). The safetensors headers (an
8-byte length and a JSON table) are read here in pure Python, so a missing tensor, a wrong
shape or a corrupt file is a config error (exit 2) before any worker is spawned.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ConfigIssue

_ATTENTION = {
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
}
_QKV_BIAS = {
    "attention.wq.bias": "self_attn.q_proj.bias",
    "attention.wk.bias": "self_attn.k_proj.bias",
    "attention.wv.bias": "self_attn.v_proj.bias",
}
_DENSE = {"ffn.w1.weight": "mlp.gate_proj.weight", "ffn.w3.weight": "mlp.up_proj.weight",
          "ffn.w2.weight": "mlp.down_proj.weight"}
_MIXTRAL = {"ffn.gate.weight": "block_sparse_moe.gate.weight"}
_MIXTRAL_EXPERT = {"w1.weight": "block_sparse_moe.experts.{E}.w1.weight",
                   "w3.weight": "block_sparse_moe.experts.{E}.w3.weight",
                   "w2.weight": "block_sparse_moe.experts.{E}.w2.weight"}
_QWEN2_MOE = {
    "ffn.gate.weight": "mlp.gate.weight",
    "ffn.shared.mlp.w1.weight": "mlp.shared_expert.gate_proj.weight",
    "ffn.shared.mlp.w3.weight": "mlp.shared_expert.up_proj.weight",
    "ffn.shared.mlp.w2.weight": "mlp.shared_expert.down_proj.weight",
    "ffn.shared.gate.weight": "mlp.shared_expert_gate.weight",
}
_QWEN2_MOE_EXPERT = {"w1.weight": "mlp.experts.{E}.gate_proj.weight",
                     "w3.weight": "mlp.experts.{E}.up_proj.weight",
                     "w2.weight": "mlp.experts.{E}.down_proj.weight"}

LAYER_TABLES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "LlamaForCausalLM": (_DENSE, {}),
    "Qwen2ForCausalLM": (_DENSE, {}),
    "MixtralForCausalLM": (_MIXTRAL, _MIXTRAL_EXPERT),
    "Qwen2MoeForCausalLM": (_QWEN2_MOE, _QWEN2_MOE_EXPERT),
}
"""Per architecture: (layer weights beyond attention, per-expert weights), relative to
`model.layers.{L}.` on disk and `layers.{L}.` (experts: `layers.{L}.ffn.experts.{E}.`) here."""


def weight_names(spec) -> dict[str, str]:
    """Plain-model parameter name -> on-disk tensor name, for every weight of `spec`
    (a ModelSpec with an architecture)."""
    layer_extra, expert = LAYER_TABLES[spec.architecture]
    per_layer = dict(_ATTENTION)
    if spec.attention_bias:
        per_layer.update(_QKV_BIAS)
    per_layer.update(layer_extra)
    if not spec.shared_expert_intermediate_size:
        per_layer = {k: v for k, v in per_layer.items() if "shared" not in k}
    names = {"tok_embeddings.weight": "model.embed_tokens.weight",
             "norm.weight": "model.norm.weight",
             "output.weight": ("model.embed_tokens.weight" if spec.tie_word_embeddings
                               else "lm_head.weight")}
    for layer in range(spec.num_layers):
        for ours, disk in per_layer.items():
            names[f"layers.{layer}.{ours}"] = f"model.layers.{layer}.{disk}"
        for e in range(spec.num_experts if expert else 0):
            for ours, disk in expert.items():
                names[f"layers.{layer}.ffn.experts.{e}.{ours}"] = (
                    f"model.layers.{layer}.{disk.format(E=e)}")
    return names


def full_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Plain-model parameter name -> its full (unsharded) shape."""
    h, d = spec.hidden_size, spec.head_dim
    q, kv, ff, shared = (spec.num_attention_heads * d, spec.num_kv_heads * d,
                         spec.intermediate_size, spec.shared_expert_intermediate_size)
    by_suffix = {
        "attention_norm.weight": (h,), "ffn_norm.weight": (h,),
        "attention.wq.weight": (q, h), "attention.wk.weight": (kv, h),
        "attention.wv.weight": (kv, h), "attention.wo.weight": (h, q),
        "attention.wq.bias": (q,), "attention.wk.bias": (kv,), "attention.wv.bias": (kv,),
        "ffn.gate.weight": (spec.num_experts, h), "shared.gate.weight": (1, h),
        "shared.mlp.w1.weight": (shared, h), "shared.mlp.w3.weight": (shared, h),
        "shared.mlp.w2.weight": (h, shared),
        "w1.weight": (ff, h), "w3.weight": (ff, h), "w2.weight": (h, ff),
    }
    shapes = {}
    for name in weight_names(spec):
        if name in ("tok_embeddings.weight", "output.weight"):
            shapes[name] = (spec.vocab_size, h)
        elif name == "norm.weight":
            shapes[name] = (h,)
        else:
            rest = name.split(".", 2)[2]
            key = next(k for k in (rest, rest.split(".", 1)[-1],
                                   ".".join(rest.split(".")[-2:])) if k in by_suffix)
            shapes[name] = by_suffix[key]
    return shapes


@dataclass(frozen=True)
class TensorEntry:
    """Where one on-disk tensor is: its file, dtype, shape and the byte offset of its data in
    the file (from the safetensors header)."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0


FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
"""safetensors dtypes the weights may be stored in (converted to model.dtype on load)."""

MAX_HEADER_BYTES = 100 << 20
"""safetensors' own limit on the JSON header."""


def _issue(folder: str | Path, message: str) -> ConfigError:
    return ConfigError(ConfigIssue("model.path", str(folder), message))


def read_header(file: Path) -> dict[str, TensorEntry]:
    """The tensors a .safetensors file declares (name -> entry), from its header alone;
    a ConfigError names the file when the header is cut short or not the format's JSON."""
    try:
        with file.open("rb") as f:
            raw = f.read(8)
            size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 2 <= size <= MAX_HEADER_BYTES:
                raise ValueError("no valid header length")
            body = f.read(size)
            if len(body) != size:
                raise ValueError("the header is cut short")
            end = f.seek(0, 2)
        header = json.loads(body.decode("utf-8"))
        entries = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, stop = meta["data_offsets"]
            if not 0 <= start <= stop <= end - 8 - size:
                raise ValueError(f"tensor {name!r} lies past the end of the file")
            entries[name] = TensorEntry(file.name, str(meta["dtype"]),
                                        tuple(int(n) for n in meta["shape"]), 8 + size + start)
        return entries
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise _issue(file.parent, f"{file.name} is not a readable safetensors file ({e}); "
                                  "re-download or re-save the checkpoint") from None


def checkpoint_index(folder: str | Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint: from model.safetensors.index.json's weight map when
    there is one (each listed file's header read), else from every *.safetensors file."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise _issue(folder, f"model.safetensors.index.json is malformed ({e})") from None
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise _issue(folder, "holds no *.safetensors weights (pytorch .bin checkpoints are "
                                 "not read: convert them with safetensors)")
    entries: dict[str, TensorEntry] = {}
    for name in files:
        file = folder / name
        if not file.is_file():
            raise _issue(folder, f"{name}, listed in model.safetensors.index.json, is missing")
        entries.update(read_header(file))
    return entries


def checkpoint_issues(spec) -> list[ConfigIssue]:
    """Problems of spec.path's weights and tokenizer against the shape config.json gave:
    unreadable files, missing tensors and wrong shapes (each named, a few at most)."""
    folder = Path(spec.path)
    try:
        entries = checkpoint_index(folder)
    except ConfigError as e:
        return e.issues
    missing, wrong = [], []
    shapes = full_shapes(spec)
    for ours, disk in weight_names(spec).items():
        entry = entries.get(disk)
        if entry is None:
            missing.append(disk)
        elif entry.shape != shapes[ours]:
            wrong.append(f"{disk} has shape {list(entry.shape)}, config.json implies "
                         f"{list(shapes[ours])}")
        elif entry.dtype not in FLOAT_DTYPES:
            wrong.append(f"{disk} is stored as {entry.dtype}; weights must be one of "
                         f"{', '.join(FLOAT_DTYPES)}")
    issues = []
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        issues.append(ConfigIssue("model.path", str(folder), f"tensor {', '.join(missing[:3])}"
                                  f"{more} missing from the checkpoint's safetensors files"))
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        issues.append(ConfigIssue("model.path", str(folder), "; ".join(wrong[:3]) + more))
    if not (folder / "tokenizer.json").is_file():
        issues.append(ConfigIssue("model.path", str(folder),
                                  "has no tokenizer.json (the tokenizer is served from it); "
                                  "save the tokenizer into the folder"))
    return issues
