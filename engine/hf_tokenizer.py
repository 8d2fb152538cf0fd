"""The tokenizer of a Hugging Face checkpoint folder, and its chat template.

`tokenizers` reads tokenizer.json; tokenizer_config.json gives the special tokens and the
chat template, rendered with jinja2 the way transformers' `apply_chat_template` renders it
(a sandboxed environment with trim_blocks / lstrip_blocks and loop controls, the special
tokens as variables, `raise_exception`, a `tojson` that keeps non-ASCII); generation_config
gives the EOS / stop tokens. No torch: the router uses it too (engine/tokenizer.py's
protocol; `load_tokenizer` picks this or the byte tokenizer from model.path).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .tokenizer import ByteTokenizer, Tokenizer


class TokenizerFileError(ValueError):
    """A checkpoint's tokenizer files are missing or unreadable (a user error: exit 2)."""


class ChatTemplateError(ValueError):
    """The chat template refused the messages (its raise_exception) or does not render."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerFileError(f"{path}: not readable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """tokenizer.json + tokenizer_config.json + generation_config.json of one folder."""

    SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer as RustTokenizer

        folder = Path(folder)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise TokenizerFileError(f"{folder} has no tokenizer.json")
        try:
            self._tok = RustTokenizer.from_file(str(file))
        except Exception as e:  # noqa: BLE001 - the library raises its own generic Exception
            raise TokenizerFileError(f"{file}: not a tokenizers file ({e})") from None
        config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        model = _read_json(folder / "config.json")
        self.special_tokens = {k: t for k in self.SPECIAL_KEYS
                               if (t := _token_text(config.get(k))) is not None}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: the "default" one
            template = next((t.get("template") for t in template
                             if isinstance(t, dict) and t.get("name") == "default"), None)
        self.chat_template: str | None = template if isinstance(template, str) else None
        self._template = None
        self._stop_ids = self._eos_ids(generation, model)

    def _eos_ids(self, generation: Mapping[str, Any], model: Mapping[str, Any]) -> tuple[int, ...]:
        """The ids transformers' generate stops at: generation_config's eos_token_id (one or a
        list), else config.json's (what generate falls back to), else the tokenizer's
        eos_token."""
        for source in (generation, model):
            value = source.get("eos_token_id")
            ids = value if isinstance(value, list) else [value]
            if ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                return tuple(ids)
        eos = self.special_tokens.get("eos_token")
        eos_id = self._tok.token_to_id(eos) if eos is not None else None
        return () if eos_id is None else (eos_id,)

    @property
    def eos_token_id(self) -> int | None:
        """The main end token: the tokenizer's eos_token when it is one of generation_config's
        (the chat turn end, e.g. <|im_end|>, <|eot_id|>), else the first. The engine stops
        at every id of `stop_token_ids`, not only this one."""
        eos = self.special_tokens.get("eos_token")
        eos_id = self._tok.token_to_id(eos) if eos is not None else None
        if eos_id in self._stop_ids:
            return eos_id
        return self._stop_ids[0] if self._stop_ids else None

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Every token that ends a generation (generation_config's eos_token_id list)."""
        return self._stop_ids

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text of a conversation, as transformers renders it."""
        if self.chat_template is None:
            raise ChatTemplateError("the checkpoint's tokenizer_config.json has no "
                                    "chat_template; use completions instead")
        import jinja2

        if self._template is None:
            self._template = _environment().from_string(self.chat_template)
        try:
            return self._template.render(messages=list(messages),
                                         add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens, **extra)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template failed: {e}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]],
                    add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered conversation (its special tokens are in the text)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt),
                           add_special_tokens=False)


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _environment():
    """jinja2 as chat templates expect it: sandboxed, trim_blocks, lstrip_blocks, loop
    controls, raise_exception and strftime_now globals, tojson keeping non-ASCII."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def load_tokenizer(model_path: str | None) -> Tokenizer:
    """The tokenizer a model is served with: its checkpoint's (model.path), else the byte
    tokenizer of the seeded reference model."""
    return ByteTokenizer() if model_path is None else HFTokenizer(model_path)
