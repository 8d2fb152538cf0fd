"""Loading a Hugging Face-format checkpoint into the plain model, each rank reading its shard.

The model is built on the meta device (no memory), cut down by pp/tp/ep exactly as for the
seeded model, and only then are its remaining parameters filled: each from its on-disk
tensor (core/checkpoint.py's name table), read with safetensors' lazy `get_slice` as just
the rows or columns this rank owns (its heads, MLP columns, layers, experts, vocabulary
rows). A rank's peak memory is its shard, not the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..core.checkpoint import checkpoint_index, full_shapes, weight_names
from .context import ParallelContext
from .ep import apply_ep
from .model import DTYPES, Rotary, Transformer
from .pp import apply_pp
from .tp import apply_tp, shared_columns


def load_checkpoint_model(ctx: ParallelContext) -> Transformer:
    """This rank's share of the model at ctx.model.path, in ctx.model.dtype on ctx.device."""
    spec = ctx.model
    with torch.device("meta"):
        model = Transformer(spec)
    model = apply_ep(apply_tp(apply_pp(model, ctx), ctx), ctx)
    rotary = Rotary(spec.head_dim, spec.max_seq_len, spec.rope_theta,
                    spec.rope_scaling).to(ctx.device)
    model.rotary = rotary
    for block in model.layers:
        block.attention.rotary = [rotary]
    load_shard(model, ctx)
    return model.eval()


def _held_parameters(model: Transformer) -> Iterator[tuple[str, nn.Module, str]]:
    """(full-model parameter name, owning module, attribute) of every parameter this rank
    holds; layers are named by their global id, experts by their global expert id."""
    parts: list[tuple[str, nn.Module]] = [
        (name, getattr(model, name)) for name in ("tok_embeddings", "norm", "output")
        if getattr(model, name) is not None]
    parts += [(f"layers.{block.layer_id}", block) for block in model.layers]
    for prefix, root in parts:
        for mod_name, module in root.named_modules():
            for attr, _ in module.named_parameters(recurse=False):
                yield ".".join(p for p in (prefix, mod_name, attr) if p), module, attr


def _owned_range(name: str, ctx: ParallelContext) -> range:
    """The rows (or columns) of full tensor `name` that this TP rank holds when it is
    sharded at all (the dimension is the one whose size differs)."""
    d = ctx.model.head_dim
    if name in ("tok_embeddings.weight", "output.weight"):
        return ctx.tp_vocab_shards[ctx.tp.rank_in_group]
    if ".attention.wk." in name or ".attention.wv." in name:
        kv = ctx.kv_heads
        return range(kv.start * d, kv.stop * d)
    if ".attention." in name:
        heads = ctx.attention_heads
        return range(heads.start * d, heads.stop * d)
    if ".shared.mlp." in name:
        return shared_columns(ctx)
    return ctx.mlp_columns


def load_shard(model: Transformer, ctx: ParallelContext) -> None:
    """Fill every parameter the rank holds from the checkpoint, reading only its slice."""
    spec = ctx.model
    folder = Path(spec.path)
    names, shapes, index = weight_names(spec), full_shapes(spec), checkpoint_index(folder)
    dtype = DTYPES[spec.dtype]
    by_file: dict[str, list[tuple[str, nn.Module, str]]] = defaultdict(list)
    for name, module, attr in _held_parameters(model):
        by_file[index[names[name]].file].append((name, module, attr))
    for file, params in by_file.items():
        with safe_open(folder / file, framework="pt", device="cpu") as f:
            for name, module, attr in params:
                want = tuple(getattr(module, attr).shape)
                tensor = _read(f.get_slice(names[name]), shapes[name], want, name, ctx)
                tensor = tensor.to(device=ctx.device, dtype=dtype)
                setattr(module, attr, nn.Parameter(tensor, requires_grad=False))


def _read(view, full: tuple[int, ...], want: tuple[int, ...], name: str,
          ctx: ParallelContext) -> torch.Tensor:
    """The whole tensor, or this rank's rows/columns of it along the one dimension where the
    held shape `want` is smaller than the full one."""
    if want == full:
        return view[:]
    (dim,) = [i for i, (a, b) in enumerate(zip(want, full, strict=True)) if a != b]
    rows = _owned_range(name, ctx)
    if len(rows) != want[dim]:
        raise RuntimeError(f"shard of {want} from {full}: {rows} does not fit")
    return view[rows.start:rows.stop] if dim == 0 else view[:, rows.start:rows.stop]
