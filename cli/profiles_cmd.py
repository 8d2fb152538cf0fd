"""`pypto profiles`: the shipped serving profiles and model shapes."""

from __future__ import annotations

import typer

from ..core.loader import load_profile, model_profile, model_profile_names, profile_names
from ..core.report import layout_label
from .errors import user_errors


def register(app: typer.Typer) -> None:
    app.command("profiles")(profiles)


def profiles() -> None:
    """List shipped profiles (use with --profile) and model shapes (--model-profile).

    Example: pypto profiles
    """
    from rich.table import Table

    from .console import make_console

    table = Table(title="Serving profiles (--profile)")
    for col in ("name", "world", "layout", "nodes x devices", "platform", "model"):
        table.add_column(col)
    with user_errors():
        for name in profile_names():
            cfg = load_profile(name)
            c = cfg.cluster
            table.add_row(name, str(cfg.parallel.world_size), layout_label(cfg),
                          f"{c.nnodes} x {c.devices_per_node}", c.platform, cfg.model.name)
        models = Table(title="Model shapes (--model-profile)")
        for col in ("name", "layers", "hidden", "heads / kv", "experts (top-k)", "vocab"):
            models.add_column(col)
        for name in model_profile_names():
            m = model_profile(name)
            experts = f"{m.num_experts} ({m.experts_per_token})" if m.is_moe else "dense"
            models.add_row(name, str(m.num_layers), str(m.hidden_size),
                           f"{m.num_attention_heads} / {m.num_kv_heads}", experts,
                           str(m.vocab_size))
    console = make_console()
    console.print(table)
    console.print(models)
