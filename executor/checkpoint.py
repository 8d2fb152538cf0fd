"""Loading a Hugging Face-format checkpoint into the plain model, each rank reading its shard.

The model is built with its parameters on the meta device (no memory), cut down by pp/tp/ep
exactly as for the seeded model, and only then are its remaining parameters filled: each from
its on-disk tensor (core/checkpoint.py's name table and the safetensors header offsets it
read), reading exactly the bytes of the rows or columns this rank owns (its heads, MLP
columns, layers, experts, vocabulary rows) into memory of that size. Not safetensors'
`get_slice`: in safetensors 0.8 its slices are views of a mmap of the whole tensor, so
touching a column slice pages the whole tensor into the rank's RSS (measured: TP 4 ranks
peaked at ~290 MiB over base for a 60 MiB shard). A rank's peak memory is its shard, not the
model.

Only the parameters go to the meta device, not the whole construction (`torch.device("meta")`):
on meta, the rotary table's arithmetic and the embedding's normal_ run torch's Python
reference kernels, whose first use imports sympy and torch._dynamo: ~75 MiB more RSS on every
rank and ~1.5 s (docs/benchmarks.md). The rotary table is built for real, once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.checkpoint import TensorEntry, checkpoint_index, full_shapes, weight_names
from .context import ParallelContext
from .ep import apply_ep
from .model import DTYPES, FusedProjection, Transformer
from .pp import apply_pp
from .tp import apply_tp, shared_columns

_PARAMETER_FACTORIES = frozenset((torch.empty, torch.ones, torch.zeros))
"""What the plain model's modules allocate their parameters with (nn.Linear, nn.Embedding:
empty; RMSNorm: ones)."""
_FILLS = frozenset(("normal_", "uniform_", "fill_", "zero_", "kaiming_uniform_",
                    "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "trunc_normal_",
                    "constant_", "ones_", "zeros_"))
"""In-place initialisations: on a meta tensor they change nothing."""


class ParametersOnMeta(TorchFunctionMode):
    """Building and cutting down a module with its parameters on the meta device (factories
    without a device), without torch's Python meta kernels: initialisations of meta tensors
    are skipped and a meta clone (TP's column slices) is a new meta tensor of its shape.
    Everything else (the rotary table) is real."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _PARAMETER_FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        elif func is torch.Tensor.clone and args[0].is_meta:
            return torch.empty(args[0].shape, dtype=args[0].dtype, device="meta")
        elif getattr(func, "__name__", None) in _FILLS:
            target = args[0] if args else kwargs.get("tensor")  # nn.init passes it by name
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def load_checkpoint_model(ctx: ParallelContext) -> Transformer:
    """This rank's share of the model at ctx.model.path, in ctx.model.dtype on ctx.device."""
    with ParametersOnMeta():
        model = apply_ep(apply_tp(apply_pp(Transformer(ctx.model), ctx), ctx), ctx)
    rotary = model.rotary.to(ctx.device)  # built for real: the same table the seeded model has
    for block in model.layers:
        block.attention.rotary = [rotary]
    load_shard(model, ctx)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a tensor built on meta that the checkpoint does not fill: fail here, not later
        raise RuntimeError(f"not filled from the checkpoint (still on meta): {left[:3]}")
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


DTYPES_ON_DISK = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "F64": torch.float64}


def load_shard(model: Transformer, ctx: ParallelContext) -> None:
    """Fill every parameter the rank holds from the checkpoint, reading only its slice."""
    spec = ctx.model
    folder = Path(spec.path)
    names, shapes, index = weight_names(spec), full_shapes(spec), checkpoint_index(folder)
    dtype = DTYPES[spec.dtype]
    by_file: dict[str, list[tuple[str, nn.Module, str]]] = defaultdict(list)
    for name, module, attr in _held_parameters(model):
        by_file[index[names[name]].file].append((name, module, attr))
    fused = _fused_weights(model, dtype, ctx.device)
    targets = {id(lin): whole[rows] for _, whole, parts in fused for lin, rows in parts}
    for file, params in by_file.items():
        with open(folder / file, "rb", buffering=0) as f:
            for name, module, attr in params:
                want = tuple(getattr(module, attr).shape)
                target = targets.get(id(module)) if attr == "weight" else None
                tensor = _read(f, index[names[name]], shapes[name], want, name, ctx, target)
                if target is not None:
                    tensor = target if tensor is target else target.copy_(tensor)
                else:
                    tensor = tensor.to(device=ctx.device, dtype=dtype)
                setattr(module, attr, nn.Parameter(tensor, requires_grad=False))
    for proj, whole, _ in fused:
        proj.fuse_into(whole)  # the layers' weights are its rows already: nothing is copied


def _fused_weights(model: Transformer, dtype: torch.dtype, device: torch.device
                   ) -> list[tuple[FusedProjection, torch.Tensor, list[tuple[nn.Linear, slice]]]]:
    """Each projection group's fused weight, allocated once, and the rows each of its layers'
    weights is read into: the group then needs no concatenated copy (a second copy of those
    weights at the moment of fusing, which would count in a rank's peak memory)."""
    out = []
    for module in model.modules():
        for proj in (getattr(module, "qkv", None), getattr(module, "w13", None)):
            if isinstance(proj, FusedProjection):
                shapes = [lin.weight.shape for lin in proj.linears]
                whole = torch.empty((sum(s[0] for s in shapes), *shapes[0][1:]), dtype=dtype,
                                    device=device)
                parts, row = [], 0
                for lin, shape in zip(proj.linears, shapes, strict=True):
                    parts.append((lin, slice(row, row + shape[0])))
                    row += shape[0]
                out.append((proj, whole, parts))
    return out


def _read(f, entry: TensorEntry, full: tuple[int, ...], want: tuple[int, ...], name: str,
          ctx: ParallelContext, into: torch.Tensor | None = None) -> torch.Tensor:
    """The whole tensor, or this rank's rows/columns of it along the one dimension where the
    held shape `want` is smaller than the full one: exactly those bytes are read (one read
    for whole rows, one per row for columns), into memory of the slice's size: `into` itself
    where it is a contiguous CPU tensor of the file's dtype, else a new one."""
    disk_dtype = DTYPES_ON_DISK.get(entry.dtype)
    if disk_dtype is None:
        raise RuntimeError(f"{name}: safetensors dtype {entry.dtype} is not a float type")
    direct = (into is not None and into.device.type == "cpu" and into.dtype == disk_dtype
              and into.is_contiguous())
    if want == full:
        return _pread(f, entry.offset, into if direct else torch.empty(full, dtype=disk_dtype))
    (dim,) = [i for i, (a, b) in enumerate(zip(want, full, strict=True)) if a != b]
    rows = _owned_range(name, ctx)
    if len(rows) != want[dim]:
        raise RuntimeError(f"shard of {want} from {full}: {rows} does not fit")
    out = into if direct else torch.empty(want, dtype=disk_dtype)
    item = out.element_size()
    row_bytes = full[-1] * item if len(full) > 1 else item
    if dim == 0:
        return _pread(f, entry.offset + rows.start * row_bytes, out)
    for r in range(full[0]):
        _pread(f, entry.offset + r * row_bytes + rows.start * item, out[r])
    return out


def _pread(f, offset: int, out: torch.Tensor) -> torch.Tensor:
    """Fill the contiguous tensor `out` with the file's bytes at `offset`."""
    buffer = memoryview(out.view(torch.uint8).numpy()).cast("B")
    f.seek(offset)
    if f.readinto(buffer) != len(buffer):
        raise RuntimeError(f"{f.name} ends before byte {offset + len(buffer)}")
    return out
