"""Incremental detokenization and the stop rules, through the byte tokenizer."""

from __future__ import annotations

import pytest

from pypto_serving.engine.output import IncrementalDetokenizer, OutputProcessor
from pypto_serving.engine.request import Request
from pypto_serving.engine.sampling_params import SamplingParams
from pypto_serving.engine.tokenizer import ByteTokenizer, Tokenizer

TOK = ByteTokenizer()


def feed(sampling: SamplingParams, text_or_ids, prompt: str = "hi",
         eos_ids: tuple[int, ...] = TOK.stop_token_ids) -> tuple[list[str], str]:
    """Feed tokens one by one as the engine does; the text chunks sent and the reason."""
    ids = TOK.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
    req = Request("r", 0, TOK.encode(prompt), sampling)
    proc = OutputProcessor(req, TOK, frozenset(eos_ids))
    sent: list[str] = []
    for t in ids:
        req.token_ids.append(t)
        text, reason = proc.on_token(t)
        sent.append(text)
        if reason:
            return sent, reason
    return sent, None


def test_byte_tokenizer_round_trips_utf8_and_names_bad_ids():
    assert isinstance(TOK, Tokenizer)
    text = "héllo, 世界 🙂"
    assert TOK.decode(TOK.encode(text)) == text
    assert TOK.vocab_size == 256 and TOK.eos_token_id == 0
    # a shape-only model's vocabulary is larger: ids past the bytes are U+FFFD, not a crash
    assert TOK.decode([65, 99679, 66]) == "A\ufffdB"
    with pytest.raises(ValueError, match="token id -1 is not a token id"):
        TOK.decode([65, -1])


def test_multibyte_characters_are_held_until_complete():
    detok = IncrementalDetokenizer(TOK)
    pieces = [detok.add(b) for b in "a世🙂".encode()]
    assert pieces == ["a", "", "", "世", "", "", "", "🙂"]
    detok = IncrementalDetokenizer(TOK)
    assert [detok.add(b) for b in "世".encode()[:2]] == ["", ""]
    assert detok.flush() == "\ufffd"  # the request ended inside a character


def test_an_invalid_byte_does_not_block_the_text_after_it():
    detok = IncrementalDetokenizer(TOK)
    assert "".join(detok.add(b) for b in b"\xffok") == "\ufffdok"


def test_stray_continuation_bytes_do_not_hold_the_text_forever():
    detok = IncrementalDetokenizer(TOK)
    out = "".join(detok.add(0x80) for _ in range(20))
    assert out and set(out) == {"\ufffd"}
    assert len(out) + len(detok.flush()) == 20


def test_max_tokens_finishes_with_length():
    sent, reason = feed(SamplingParams(max_tokens=3), "abcdef")
    assert (sent, reason) == (["a", "b", "c"], "length")


def test_length_flushes_a_held_partial_character():
    sent, reason = feed(SamplingParams(max_tokens=2), "世".encode())
    assert (sent, reason) == (["", "\ufffd"], "length")


def test_eos_stops_unless_ignore_eos_and_its_text_is_not_shown():
    assert feed(SamplingParams(max_tokens=9), [104, 0, 105]) == (["h", ""], "stop")
    sent, reason = feed(SamplingParams(max_tokens=3, ignore_eos=True), [104, 0, 105])
    assert reason == "length" and "".join(sent) == "h\x00i"


def test_every_eos_id_stops_unless_ignore_eos():
    """A checkpoint's generation_config may list several eos ids: each one ends the request."""
    for eos in (ord("!"), ord("?")):
        sent, reason = feed(SamplingParams(max_tokens=9), f"ok{chr(eos)}more",
                            eos_ids=(ord("!"), ord("?")))
        assert ("".join(sent), reason) == ("ok", "stop")
    sent, reason = feed(SamplingParams(max_tokens=5, ignore_eos=True), "ok!?m",
                        eos_ids=(ord("!"), ord("?")))
    assert ("".join(sent), reason) == ("ok!?m", "length")


def test_stop_token_ids_stop():
    sent, reason = feed(SamplingParams(max_tokens=9, stop_token_ids=(ord("!"),)), "ok!more")
    assert ("".join(sent), reason) == ("ok", "stop")


def test_stop_string_cuts_the_text_and_its_start_is_held_back():
    sent, reason = feed(SamplingParams(max_tokens=50, stop=("STOP",)), "go STxSTOP after")
    assert reason == "stop" and "".join(sent) == "go STx"
    # "S" and "ST" were held (they might begin STOP), released once "x" ruled that out.
    assert sent[:7] == ["g", "o", " ", "", "", "STx", ""]


def test_a_stop_string_across_a_multibyte_boundary_and_several_stops():
    sent, reason = feed(SamplingParams(max_tokens=50, stop=("界!", "zz")), "世界!x")
    assert ("".join(sent), reason) == ("世", "stop")
    sent, reason = feed(SamplingParams(max_tokens=50, stop=("abc", "bz")), "xabz")
    assert ("".join(sent), reason) == ("xa", "stop")


def test_held_text_is_released_when_the_request_ends_by_length():
    sent, reason = feed(SamplingParams(max_tokens=3, stop=("abc",)), "xab")
    assert (sent, reason) == (["x", "", "ab"], "length")
