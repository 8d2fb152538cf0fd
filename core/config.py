"""The serving config schema: one vLLM-shaped `parallel` section plus model, cluster and serve.

Every field has a default, a bound and a docstring with an example; pydantic turns the
docstrings into field descriptions (and so into `pypto config schema`). Cross-field rules
live here too, in `ServingConfig`, and report every problem of a config at once.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from .checkpoint import checkpoint_issues
from .errors import ConfigError, ConfigIssue
from .hf_config import SUPPORTED_ARCHITECTURES, merge_model_section
from .layout import Layout
from .platform import Platform

PlacementStrategy = Literal["linear", "round_robin"]
PlacementMode = Literal["replica", "overlapped"]
All2AllBackend = Literal["pypto_default", "allgather_reducescatter"]
DataParallelBackend = Literal["local", "multiproc", "external"]
DataParallelLoadBalance = Literal["internal", "external", "hybrid"]
DType = Literal["float32", "float16", "bfloat16"]
Architecture = Literal[SUPPORTED_ARCHITECTURES]  # Literal[("a", "b")] is Literal["a", "b"]
"""The checkpoint architectures the plain model runs (core/hf_config.py reads them)."""
RoutingPolicy = Literal["least_loaded", "round_robin", "power_of_two", "prefix_aware", "session"]

# Bounds that keep every derived answer small enough to hold: a rank lists its expert ids
# and a group its member ranks, so a typo like 10**11 must be a config error, not an
# out-of-memory crash in `topo show`. Both cover the benchmarked 1M-rank, 65,536-expert shape.
MAX_WORLD_SIZE = 1 << 20
MAX_EXPERTS = 1 << 16

def _whole_number(value: Any) -> Any:
    """2.0 -> 2: JSON Schema's "integer" admits whole floats, so the loader does too. Nothing
    else is converted (sizes are strict: `true` or `"2"` stay errors)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Count = Annotated[int, BeforeValidator(_whole_number)]
"""An integer field as JSON Schema defines one: ints and whole floats, never bools or text."""


def _utf8_text(value: str) -> str:
    """Refuse lone surrogates (only a JSON escape like \\ud800 makes one): no UTF-8 file,
    hence no YAML or TOML config, can hold them."""
    if not value.isascii() and _SURROGATE.search(value):
        raise ValueError("has a lone surrogate (such as \\ud800), which no UTF-8 text can "
                         "hold; use the character itself")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")

Text = Annotated[str, AfterValidator(_utf8_text),
                 WithJsonSchema({"type": "string", "pattern": "^[^\\ud800-\\udfff]*$"})]
"""A string field: any Unicode text that UTF-8 can hold."""

_SCHEMA = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ParallelConfig(BaseModel):
    """How the model is split: data, pipeline, tensor and expert parallelism."""

    model_config = _SCHEMA

    data_parallel_size: Count = Field(1, strict=True, ge=1)
    """Independent serving replicas (DP), each with its own scheduler and KV cache.
    Example: 2 serves two copies of the model behind the router."""

    tensor_parallel_size: Count = Field(1, strict=True, ge=1)
    """Devices one layer's tensors are split over (TP): heads, columns and rows.
    Example: 4 gives each rank a quarter of the attention heads."""

    pipeline_parallel_size: Count = Field(1, strict=True, ge=1)
    """Ordered stages the layer stack is cut into (PP).
    Example: 2 with 32 layers gives layers 0-15 to stage 0 and 16-31 to stage 1."""

    data_parallel_size_local: Count | None = Field(None, strict=True, ge=1)
    """DP replicas placed on each node; null derives it from cluster.devices_per_node.
    Example: 1 with TP 4 on 4-device nodes puts one replica per node."""

    pipeline_layer_partition: tuple[Annotated[Count, Field(strict=True, ge=1)], ...] | None = None
    """Explicit layers per stage, overriding the even split; must sum to model.num_layers.
    Example: [7, 9] gives stage 0 seven layers and stage 1 nine."""

    enable_expert_parallel: bool = Field(False, strict=True)
    """Partition MoE experts over the EP group (size DP x TP) instead of sharding each expert
    with TP. MoE models only. Example: true with DP 2 x TP 4 spreads experts over 8 ranks."""

    expert_parallel_size: Count | None = Field(None, strict=True, ge=1)
    """PyPTO Serving's explicit EP size; null derives it. Our EP group always spans DP x TP
    ranks of one stage, so when given it must equal that (1 with expert parallelism off).
    Example: 8 with DP 8 x TP 1."""

    placement_mode: PlacementMode | None = None
    """PyPTO Serving's word for how replicas and experts share devices: 'replica' keeps each
    DP replica on devices of its own (no EP across replicas); 'overlapped' lays the DP
    attention replicas and one EP group over the same devices (enable_expert_parallel with
    EP = DP x TP). Null: whichever enable_expert_parallel implies.
    Example: 'overlapped' for DeepSeek with DP 8 x EP 8 x TP 1 on 8 devices."""

    expert_placement_strategy: PlacementStrategy = "linear"
    """How experts map to EP ranks: 'linear' gives each rank a contiguous block (the first
    E mod n ranks one extra); 'round_robin' gives rank i every expert e with e mod n = i.
    Example: 10 experts on 4 ranks, linear: [0,1,2] [3,4,5] [6,7] [8,9]."""

    all2all_backend: All2AllBackend = "pypto_default"
    """Collective that moves tokens to their experts: 'pypto_default' is a variable-size
    all_to_all; 'allgather_reducescatter' gathers all tokens and reduce-scatters results.
    Example: 'allgather_reducescatter' for small decode batches."""

    data_parallel_backend: DataParallelBackend = "local"
    """Where DP replicas run: 'local' in this launcher's processes, 'multiproc' one engine
    process per replica, 'external' started by someone else and only routed to.
    Example: 'external' when an orchestrator starts each replica.
    Reserved: read by `pypto serve`, which is not built yet."""

    data_parallel_load_balance: DataParallelLoadBalance = "internal"
    """Who balances requests over replicas: 'internal' our DP router, 'external' a load
    balancer in front of every replica, 'hybrid' external across nodes and internal within.
    Example: 'hybrid' behind a cloud load balancer with several replicas per node.
    Reserved: read by `pypto serve`, which is not built yet."""

    @property
    def world_size(self) -> int:
        return self.data_parallel_size * self.pipeline_parallel_size * self.tensor_parallel_size

    @property
    def ep_size(self) -> int:
        """EP group size: DP x TP when expert parallelism is on, else 1."""
        if not self.enable_expert_parallel:
            return 1
        return self.data_parallel_size * self.tensor_parallel_size


class RopeScaling(BaseModel):
    """Rotary frequency scaling of long-context checkpoints (config.json `rope_scaling`)."""

    model_config = _SCHEMA

    rope_type: Literal["linear", "llama3"]
    """'linear' divides every frequency by factor; 'llama3' scales only the low frequencies,
    blending in between. Example: 'llama3'."""

    factor: float = Field(strict=True, gt=0, allow_inf_nan=False)
    """How much longer the context is than the one trained on. Example: 8.0."""

    low_freq_factor: float = Field(1.0, strict=True, gt=0, allow_inf_nan=False)
    """llama3: wavelengths above original_max_position_embeddings / this are scaled.
    Example: 1.0."""

    high_freq_factor: float = Field(4.0, strict=True, gt=0, allow_inf_nan=False)
    """llama3: wavelengths below original_max_position_embeddings / this are kept.
    Example: 4.0."""

    original_max_position_embeddings: Count = Field(8192, strict=True, ge=1)
    """llama3: the context length trained on. Example: 8192."""


class ModelSpec(BaseModel):
    """The shape of the model: what the parallel rules are checked against."""

    model_config = _SCHEMA

    name: Text = "tiny-moe"
    """A label for tables and logs. Example: 'deepseek-v3-shape'."""

    path: str | None = None
    """A Hugging Face-format checkpoint folder (config.json, *.safetensors, tokenizer.json);
    every other model field then comes from its config.json (name, dtype and a shorter
    max_seq_len may still be set). Null: the seeded reference model.
    Example: '/models/Qwen2-7B-Instruct'."""

    architecture: Architecture | None = None
    """The checkpoint's architecture (from config.json); null for the reference model.
    Example: 'LlamaForCausalLM'."""

    num_layers: Count = Field(4, strict=True, ge=1)
    """Decoder layers. Example: 32."""

    hidden_size: Count = Field(64, strict=True, ge=1)
    """Width of the residual stream. Example: 4096."""

    num_attention_heads: Count = Field(8, strict=True, ge=1)
    """Query heads per layer. Example: 32."""

    num_kv_heads: Count = Field(4, strict=True, ge=1)
    """Key/value heads per layer (grouped-query attention); must divide the query heads.
    Example: 8 with 32 query heads."""

    intermediate_size: Count = Field(128, strict=True, ge=1)
    """Width of the dense SwiGLU MLP (and of each expert). Example: 14336."""

    num_experts: Count = Field(8, strict=True, ge=0, le=MAX_EXPERTS)
    """Routed experts per MoE layer (at most 65,536); 0 makes a dense model. Example: 64."""

    experts_per_token: Count = Field(2, strict=True, ge=1)
    """Experts each token is routed to (top-k); MoE models only. Example: 2."""

    vocab_size: Count = Field(256, strict=True, ge=1)
    """Vocabulary size of the embedding and LM head. Example: 128256."""

    max_seq_len: Count = Field(512, strict=True, ge=1)
    """Longest sequence (prompt + generated) the KV cache must hold. Example: 8192."""

    rope_theta: float = Field(10000.0, strict=True, gt=0, allow_inf_nan=False)
    """Rotary embedding base. Example: 500000.0."""

    dtype: DType = "float32"
    """Weight and activation dtype. Example: 'bfloat16' on GPUs."""

    rope_scaling: RopeScaling | None = None
    """Rotary frequency scaling; null for none. Example: {rope_type: llama3, factor: 8.0}."""

    rms_norm_eps: float = Field(1e-6, strict=True, gt=0, allow_inf_nan=False)
    """Epsilon of every RMSNorm. Example: 1e-5."""

    attention_bias: bool = Field(False, strict=True)
    """Biases on the query/key/value projections (Qwen2). Example: true."""

    tie_word_embeddings: bool = Field(False, strict=True)
    """The LM head reuses the embedding table. Example: true for Llama-3.2-1B."""

    moe_renormalize: bool = Field(True, strict=True)
    """Renormalize the top-k routing weights to sum 1 (Mixtral; Qwen2-MoE's norm_topk_prob).
    Example: false."""

    shared_expert_intermediate_size: Count = Field(0, strict=True, ge=0)
    """Width of the shared expert every token also goes through, scaled by a sigmoid gate
    (Qwen2-MoE); 0 for none. Example: 5632."""

    @model_validator(mode="before")
    @classmethod
    def _from_checkpoint(cls, data: Any) -> Any:
        """With model.path, the shape comes from the checkpoint's config.json."""
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            return merge_model_section(data)
        return data

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class ClusterSpec(BaseModel):
    """Where the ranks run."""

    model_config = _SCHEMA

    nnodes: Count = Field(1, strict=True, ge=1)
    """Hosts taking part. Example: 2."""

    devices_per_node: Count | None = Field(None, strict=True, ge=1)
    """Worker processes (one per device) on each host; null fills in world size / nnodes.
    Example: 8."""

    platform: Platform = "auto"
    """Device kind: 'auto' picks cuda, then npu, then cpu, whichever is present.
    Example: 'cpu' for the gloo-backed demo."""


class ServeSpec(BaseModel):
    """`pypto serve`: the DP router's HTTP front, its routing policy and limits, and each
    replica engine's batching and KV-cache budget."""

    model_config = _SCHEMA

    host: Text = "127.0.0.1"
    """Address the router listens on. Example: '0.0.0.0' to accept remote clients."""

    port: Count = Field(8000, strict=True, ge=0, le=65535)
    """Router port; 0 picks a free one. Example: 8000."""

    policy: RoutingPolicy = "least_loaded"
    """How requests pick a replica: 'least_loaded' weighs pending tokens (prompt tokens not
    yet prefilled plus tokens still to decode), 'round_robin' cycles, 'power_of_two' takes the
    less loaded of two random replicas, 'prefix_aware' prefers the replica that holds the
    longest cached prefix of the prompt (with a load guard), 'session' keeps requests with one
    X-Session-Id header on one replica. Example: 'prefix_aware'."""

    prefix_balance_abs_threshold: Count = Field(64, strict=True, ge=0)
    """prefix_aware's load guard: route by load instead of affinity when the busiest and the
    idlest replica differ by more than this many pending requests (and by the ratio below).
    Example: 64."""

    prefix_balance_rel_threshold: float = Field(1.5, strict=True, ge=1.0, allow_inf_nan=False)
    """prefix_aware's load guard: the busiest replica's load over the idlest one's beyond which
    affinity gives way to load. Example: 1.5."""

    max_num_seqs: Count = Field(8, strict=True, ge=1)
    """Sequences one replica runs in a batch. Example: 256."""

    max_num_batched_tokens: Count = Field(256, strict=True, ge=1)
    """Token budget of one engine step: decodes (one token each) plus prefill chunks; a longer
    prompt is prefilled in chunks over several steps. Example: 8192."""

    max_queue: Count = Field(64, strict=True, ge=1)
    """Requests a replica may hold waiting before the router answers 429. Example: 1024."""

    max_concurrent_requests: Count = Field(256, strict=True, ge=1)
    """Requests the router handles at once; past it, new ones get 429. Example: 1024."""

    max_request_bytes: Count = Field(1 << 20, strict=True, ge=1024)
    """Largest request body the router reads; a bigger one gets 413. Example: 1048576."""

    kv_block_size: Count = Field(16, strict=True, ge=1)
    """Tokens per paged KV-cache block. Example: 16."""

    kv_cache_bytes: Count | None = Field(None, strict=True, ge=1)
    """KV-cache budget per rank in bytes (CPU, or to fix it on a device); unset: enough for
    max_num_seqs sequences of model.max_seq_len on CPU, gpu_memory_utilization on a GPU.
    Example: 268435456."""

    gpu_memory_utilization: float = Field(0.9, strict=True, gt=0.0, le=1.0,
                                          allow_inf_nan=False)
    """Fraction of a device's free memory, after the weights, that the KV cache may take
    (vLLM's name). Example: 0.85."""

    enforce_eager: bool = Field(False, strict=True)
    """Run every step eagerly (vLLM's name). Unset, a one-rank replica of a dense model on
    CUDA replays a captured CUDA graph for each decode-only step (one graph per batch-size
    bucket up to max_num_seqs). Example: true."""

    drain_timeout_s: float = Field(10.0, strict=True, ge=0.0, le=3600.0, allow_inf_nan=False)
    """On Ctrl-C, how long in-flight requests may finish before the replicas are stopped.
    Example: 30."""


class ServingConfig(BaseModel):
    """The whole serving config; cross-field rules between sections live here."""

    model_config = _SCHEMA

    parallel: ParallelConfig = ParallelConfig()
    """Parallel layout (vLLM-shaped)."""

    model: ModelSpec = ModelSpec()
    """Model shape."""

    cluster: ClusterSpec = ClusterSpec()
    """Hosts and devices."""

    serve: ServeSpec = ServeSpec()
    """Router and replica limits."""

    @property
    def layout(self) -> Layout:
        """The rank grid this config describes (computed on demand; cheap)."""
        p = self.parallel
        return Layout(
            dp=p.data_parallel_size, pp=p.pipeline_parallel_size, tp=p.tensor_parallel_size
        )

    @model_validator(mode="before")
    @classmethod
    def _derive_devices_per_node(cls, data: Any) -> Any:
        """Unset cluster.devices_per_node becomes world size / nnodes, so that flags alone
        (`-dp 2 -tp 4`) describe a whole layout."""
        if not isinstance(data, dict):
            return data
        cluster = data.get("cluster", {})
        if _get(cluster, "devices_per_node") is not None:
            return data
        parallel = data.get("parallel", {})
        sizes = [_get(parallel, f"{d}_parallel_size", 1) for d in ("data", "pipeline", "tensor")]
        nnodes = _get(cluster, "nnodes", 1)
        if not all(type(v) is int and v >= 1 for v in (*sizes, nnodes)):
            return data  # field validation reports the bad values
        world = sizes[0] * sizes[1] * sizes[2]
        if world % nnodes:
            return data  # the cross-field rule explains it
        if isinstance(cluster, BaseModel):
            cluster = cluster.model_dump(exclude_unset=True)
        elif not isinstance(cluster, dict):
            return data
        return {**data, "cluster": {**cluster, "devices_per_node": world // nnodes}}

    @model_validator(mode="after")
    def _check_cross_fields(self) -> ServingConfig:
        issues = cross_field_issues(self)
        if issues:
            raise ConfigError(issues)
        return self


def model_shape_issues(m: ModelSpec) -> list[ConfigIssue]:
    """Rules inside the model section (paths 'model.*'); checked with the cross-section rules
    so that one run reports both kinds."""
    issues: list[ConfigIssue] = []
    heads = m.num_attention_heads
    if m.hidden_size % heads:
        issues.append(ConfigIssue(
            "model.hidden_size", m.hidden_size,
            f"not divisible by num_attention_heads={heads}; use a multiple of {heads}",
            ("model.num_attention_heads",)))
    elif m.head_dim % 2:
        issues.append(ConfigIssue(
            "model.hidden_size", m.hidden_size,
            f"gives head_dim = {m.hidden_size} / {heads} = {m.head_dim}, but rotary "
            f"embeddings need an even head_dim; use a multiple of {2 * heads}",
            ("model.num_attention_heads",)))
    if heads % m.num_kv_heads:
        issues.append(ConfigIssue(
            "model.num_kv_heads", m.num_kv_heads,
            f"must divide num_attention_heads={heads}; use " + _choices(_divisors(heads)),
            ("model.num_attention_heads",)))
    if m.is_moe and m.experts_per_token > m.num_experts:
        issues.append(ConfigIssue(
            "model.experts_per_token", m.experts_per_token,
            f"more than num_experts={m.num_experts}; use at most {m.num_experts}",
            ("model.num_experts",)))
    return issues


_SIZES = ("parallel.data_parallel_size", "parallel.pipeline_parallel_size",
          "parallel.tensor_parallel_size")


def cross_field_issues(cfg: ServingConfig) -> list[ConfigIssue]:
    """Every rule that ties fields together; each issue names the field to change and, in
    `related`, the other fields it read."""
    p, m, c = cfg.parallel, cfg.model, cfg.cluster
    tp, pp, dp = p.tensor_parallel_size, p.pipeline_parallel_size, p.data_parallel_size
    issues: list[ConfigIssue] = model_shape_issues(m)
    if m.path is not None and not issues:
        issues += checkpoint_issues(m)

    world = p.world_size
    if world > MAX_WORLD_SIZE:
        field, size = max((("parallel.data_parallel_size", dp),
                           ("parallel.pipeline_parallel_size", pp),
                           ("parallel.tensor_parallel_size", tp)), key=lambda fs: fs[1])
        issues.append(ConfigIssue(
            field, size,
            f"the layout DP {dp} x PP {pp} x TP {tp} has {world} ranks, more than the "
            f"{MAX_WORLD_SIZE} a layout may have; use smaller parallel sizes", _SIZES,
        ))
    if c.devices_per_node is None:
        issues.append(ConfigIssue(
            "cluster.nnodes", c.nnodes,
            f"the world of DP {dp} x PP {pp} x TP {tp} = {world} ranks does not split evenly "
            f"over {c.nnodes} nodes; use a divisor of {world} or set cluster.devices_per_node",
            _SIZES,
        ))
    elif world != c.nnodes * c.devices_per_node:
        capacity = c.nnodes * c.devices_per_node
        fix = f"set cluster.devices_per_node={world // c.nnodes}" if world % c.nnodes == 0 else (
            f"set cluster.nnodes={world // c.devices_per_node}"
            if world % c.devices_per_node == 0
            else f"make nnodes x devices_per_node = {world}"
        )
        issues.append(ConfigIssue(
            "cluster.devices_per_node", c.devices_per_node,
            f"the layout needs DP {dp} x PP {pp} x TP {tp} = {world} ranks but nnodes="
            f"{c.nnodes} x devices_per_node={c.devices_per_node} gives {capacity} devices; "
            f"{fix}, or change the parallel sizes", (*_SIZES, "cluster.nnodes"),
        ))
    elif c.devices_per_node % tp and tp % c.devices_per_node:
        # With TP fastest, a TP group is a run of TP consecutive ranks: it stays inside one
        # node only when TP divides devices_per_node (or spans whole nodes when the reverse).
        first = next(g for g in range(0, world, tp)
                     if g // c.devices_per_node != (g + tp - 1) // c.devices_per_node)
        issues.append(ConfigIssue(
            "cluster.devices_per_node", c.devices_per_node,
            f"TP groups of {tp} consecutive ranks would straddle nodes (ranks {first}-"
            f"{first + tp - 1} span nodes {first // c.devices_per_node} and "
            f"{(first + tp - 1) // c.devices_per_node}); use a multiple of {tp} devices per "
            f"node, or a divisor of {tp} for TP across whole nodes",
            ("parallel.tensor_parallel_size",),
        ))

    if not _tp_fits(m, tp):
        reasons = []
        if m.num_attention_heads % tp:
            reasons.append(
                f"model.num_attention_heads={m.num_attention_heads} is not divisible by {tp}"
            )
        if m.num_kv_heads % tp and tp % m.num_kv_heads:
            reasons.append(
                f"model.num_kv_heads={m.num_kv_heads} neither divides nor is divisible by {tp}"
            )
        if m.intermediate_size % tp:
            reasons.append(
                f"model.intermediate_size={m.intermediate_size} is not divisible by {tp}"
            )
        if m.shared_expert_intermediate_size % tp:
            reasons.append(f"model.shared_expert_intermediate_size="
                           f"{m.shared_expert_intermediate_size} is not divisible by {tp}")
        issues.append(ConfigIssue(
            "parallel.tensor_parallel_size", tp,
            "; ".join(reasons) + "; use " + _choices(valid_tensor_parallel_sizes(m)),
            ("model.num_attention_heads", "model.num_kv_heads", "model.intermediate_size"),
        ))

    if p.pipeline_layer_partition is not None:
        parts = p.pipeline_layer_partition
        if len(parts) != pp:
            issues.append(ConfigIssue(
                "parallel.pipeline_layer_partition", list(parts),
                f"has {len(parts)} entries but pipeline_parallel_size={pp}; give one per stage",
                ("parallel.pipeline_parallel_size",),
            ))
        elif sum(parts) != m.num_layers:
            issues.append(ConfigIssue(
                "parallel.pipeline_layer_partition", list(parts),
                f"its layers add up to {sum(parts)} but model.num_layers={m.num_layers}; make "
                f"the entries sum to {m.num_layers}", ("model.num_layers",),
            ))
    elif pp > m.num_layers:
        issues.append(ConfigIssue(
            "parallel.pipeline_parallel_size", pp,
            f"more stages than model.num_layers={m.num_layers}, so a stage would hold no "
            f"layer; use at most {m.num_layers}", ("model.num_layers",),
        ))

    if p.enable_expert_parallel:
        if not m.is_moe:
            issues.append(ConfigIssue(
                "parallel.enable_expert_parallel", True,
                f"model '{m.name}' is dense (model.num_experts=0); set "
                "enable_expert_parallel=false or use a MoE model", ("model.num_experts",),
            ))
        elif m.num_experts < p.ep_size:
            issues.append(ConfigIssue(
                "model.num_experts", m.num_experts,
                f"the EP group has DP {dp} x TP {tp} = {p.ep_size} ranks, so "
                f"{p.ep_size - m.num_experts} of them would hold no expert; use "
                f"num_experts >= {p.ep_size} or a smaller DP x TP",
                ("parallel.data_parallel_size", "parallel.tensor_parallel_size",
                 "parallel.enable_expert_parallel"),
            ))

    issues += _pypto_serving_issues(p)

    if p.data_parallel_size_local is not None and c.devices_per_node is not None:
        per_node, rem = divmod(c.devices_per_node, tp * pp)
        if rem or p.data_parallel_size_local != per_node:
            issues.append(ConfigIssue(
                "parallel.data_parallel_size_local", p.data_parallel_size_local,
                f"cluster.devices_per_node={c.devices_per_node} with TP {tp} x PP {pp} per "
                f"replica holds {_ratio(c.devices_per_node, tp * pp)} replicas per node; "
                + (f"use {per_node} or leave it null" if not rem else "leave it null"),
                ("cluster.devices_per_node", *_SIZES[1:]),
            ))
    return issues


def _pypto_serving_issues(p: ParallelConfig) -> list[ConfigIssue]:
    """PyPTO Serving's explicit fields (expert_parallel_size, placement_mode) must agree with
    the layout they describe; they add no freedom of their own."""
    issues: list[ConfigIssue] = []
    dp, tp, ep_on = p.data_parallel_size, p.tensor_parallel_size, p.enable_expert_parallel
    if p.expert_parallel_size is not None and p.expert_parallel_size != p.ep_size:
        fix = (f"the EP group spans DP {dp} x TP {tp} = {p.ep_size} ranks of one stage; use "
               f"{p.ep_size} or leave it null" if ep_on else
               "experts are partitioned only with enable_expert_parallel=true (the EP group "
               f"is then DP x TP = {dp * tp}); set that, or use 1 or null")
        issues.append(ConfigIssue("parallel.expert_parallel_size", p.expert_parallel_size, fix,
                                  ("parallel.enable_expert_parallel", *_SIZES[::2])))
    if p.placement_mode == "overlapped" and not ep_on:
        issues.append(ConfigIssue(
            "parallel.placement_mode", "overlapped",
            "lays one EP group over the DP replicas' devices; set enable_expert_parallel=true "
            "(or use 'replica')", ("parallel.enable_expert_parallel",)))
    elif p.placement_mode == "replica" and ep_on and dp > 1:
        issues.append(ConfigIssue(
            "parallel.placement_mode", "replica",
            f"keeps each replica's devices to itself, but with enable_expert_parallel the EP "
            f"group spans all DP {dp} x TP {tp} ranks ('overlapped'); use 'overlapped', or "
            "enable_expert_parallel=false", ("parallel.enable_expert_parallel",
                                             "parallel.data_parallel_size")))
    return issues


def _ratio(a: int, b: int) -> str:
    """a / b for a message ('1.5'), also when a is too large for a float."""
    try:
        return f"{a / b:g}"
    except OverflowError:
        return f"{a}/{b}" if a % b else str(a // b)


def _get(section: Any, key: str, default: Any = None) -> Any:
    if isinstance(section, dict):
        return section.get(key, default)
    return getattr(section, key, default)


def valid_tensor_parallel_sizes(model: ModelSpec) -> list[int]:
    """TP sizes this model can be split by (heads, kv heads and MLP width all agree)."""
    common = math.gcd(model.num_attention_heads, model.intermediate_size,
                      model.shared_expert_intermediate_size)
    return [t for t in _divisors(common) if _tp_fits(model, t)]


def _tp_fits(model: ModelSpec, tp: int) -> bool:
    kv = model.num_kv_heads
    return (model.num_attention_heads % tp == 0 and model.intermediate_size % tp == 0
            and model.shared_expert_intermediate_size % tp == 0
            and (kv % tp == 0 or tp % kv == 0))


# Trial division stops here, so an absurd size (say 10**30 heads) still fails fast; past
# 2**40 the suggestions then miss some middle divisors, which no real model has.
_DIVISOR_SEARCH_LIMIT = 1 << 20


def _divisors(n: int) -> list[int]:
    """Divisors of n in ascending order, by trial division up to sqrt(n)."""
    small, large = [], []
    for d in range(1, min(math.isqrt(n), _DIVISOR_SEARCH_LIMIT) + 1):
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
    return small + large[::-1]


def _choices(values: list[int]) -> str:
    """'1, 2, 4 or 8'; a long list keeps its ends: '1, 2, ..., 500 or 1000'."""
    shown = [str(v) for v in values]
    if len(shown) > 12:
        shown = [*shown[:8], "...", *shown[-2:]]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + f" or {shown[-1]}"
