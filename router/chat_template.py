"""The chat template: messages -> prompt text, rendered with jinja2 as transformers does.

The reference model has a byte tokenizer and no template of its own, so this is a plain one:
each message on its own lines under a role header, then the assistant header the model
continues from.
"""

from __future__ import annotations

from collections.abc import Sequence

from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ChatTemplate:
    """A compiled chat template (sandboxed: a template is data, not code)."""

    def __init__(self, source: str = DEFAULT_CHAT_TEMPLATE) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
        self._template = env.from_string(source)

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
               ) -> str:
        return self._template.render(messages=list(messages),
                                     add_generation_prompt=add_generation_prompt)

    def encode(self, tokenizer, text: str) -> list[int]:
        """Token ids of a rendered conversation."""
        return tokenizer.encode(text)


class CheckpointChatTemplate(ChatTemplate):
    """A checkpoint's own template (engine.hf_tokenizer renders it as transformers does);
    the special tokens are in the rendered text, so none are added when encoding it."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
               ) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt)

    def encode(self, tokenizer, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)
