"""`pypto model`: Hugging Face-format checkpoints (make-tiny writes one to try offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import fail, user_errors

app = typer.Typer(help="Hugging Face-format checkpoints.", no_args_is_help=True)

ARCH_NAMES = ("llama", "qwen2", "mixtral", "qwen2-moe")


@app.command("make-tiny")
def make_tiny(
    arch: Annotated[str, typer.Option("--arch", help="llama, qwen2, mixtral or qwen2-moe.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write (created; "
                                         "must be empty if it exists).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
) -> None:
    """Write a small random checkpoint (config.json, model.safetensors, a BPE tokenizer
    trained offline, chat template, generation_config.json) to serve with --model.

    Example: pypto model make-tiny --arch qwen2-moe -o tiny && pypto serve --model tiny
    """
    if arch not in ARCH_NAMES:
        raise fail(f"--arch {arch!r} is not one of {', '.join(ARCH_NAMES)}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise fail(f"{output} exists and is not an empty folder; pick a new one")
    from ..core.loader import parse_config
    from ..executor.tiny_checkpoint import make_tiny as write

    with user_errors():
        folder = write(arch, output, seed)
        spec = parse_config({"model": {"path": str(folder)}}).model
    size = sum(f.stat().st_size for f in folder.iterdir())
    experts = f", {spec.num_experts} experts (top-{spec.experts_per_token})" if spec.is_moe \
        else ""
    typer.echo(f"wrote {folder}: {spec.architecture}, {spec.num_layers} layers, hidden "
               f"{spec.hidden_size}, vocab {spec.vocab_size}{experts}; {size:,} bytes")
