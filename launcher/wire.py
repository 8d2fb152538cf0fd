"""What the launchers say to each other, checked: message schemas, the job secret, MACs.

Every line read from the rendezvous port or the control channel is parsed strictly
(pydantic, extra keys refused) and authenticated with HMAC-SHA256 under the job's shared
secret, so a stranger who can reach the port can neither join nor stop the job, and a
malformed line is a warning, never a crash. The secret comes from PYPTO_LAUNCH_SECRET or
from the file PYPTO_LAUNCH_SECRET_FILE names (never from the command line, where `ps`
shows it); it never reaches the workers' environment.

Rendezvous, per connection: node 0 sends a Challenge (a fresh nonce); the joining node
answers with a Hello MAC'd over the challenge; node 0 answers a Reply: `ok` with a MAC over
both nonces (so the joiner knows it reached the real node 0), or a refusal saying why.
Each link's control messages are then MAC'd under a key derived from both nonces, with a
sequence number per direction (no replay, no reflection).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..core.errors import one_line
from .env import SECRET_ENV, SECRET_FILE_ENV
from .errors import LaunchError

HELLO = "pypto-launch-rdzv-2"
MIN_SECRET = 16  # bytes
MAX_SECRET_FILE = 4096
MAX_LINE = 16 * 1024  # longest line either side accepts
MAX_TEXT = 2000  # characters of a reason or error carried in a message
HOW_TO_SET = (f"set the same secret on every node, e.g. `export {SECRET_ENV}=$(python3 -c "
              f"'import secrets; print(secrets.token_hex(32))')`, or put it in a file only "
              f"you can read (chmod 600) and set {SECRET_FILE_ENV} to its path")

Nonce = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Mac = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0, le=1 << 20)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Challenge(_Message):
    """Node 0 -> a new connection: prove you hold the secret for this nonce."""

    hello: Literal["pypto-launch-rdzv-2"]
    nonce: Nonce


class Hello(_Message):
    """A joining node -> node 0. `instance` names the launcher process (a reconnect of
    the same launcher replaces its old connection; another one with its rank is a
    duplicate); `nonce` is its own, for node 0's answer."""

    hello: Literal["pypto-launch-rdzv-2"]
    node_rank: Count
    nnodes: Count
    nproc_per_node: Count
    run_id: Annotated[str, StringConstraints(max_length=4096)]
    config_digest: Annotated[str, StringConstraints(max_length=64)]
    instance: Nonce
    nonce: Nonce
    mac: Mac


class Reply(_Message):
    """Node 0 -> a joining node: go (`ok`, MAC'd) or a refusal naming the reason."""

    ok: bool
    error: Text | None = None
    mac: Mac | None = None


class ControlMessage(_Message):
    """A control-channel message: `stop` (with a reason) or `done`, from node `node`."""

    op: Literal["stop", "done"]
    node: Count
    why: Text = ""
    seq: Count
    mac: Mac


def load_secret(env: Mapping[str, str]) -> bytes:
    """The job's shared secret, from PYPTO_LAUNCH_SECRET or PYPTO_LAUNCH_SECRET_FILE.

    Raises LaunchError (exit 2) when neither or both are set, the file is not a private
    regular file, or the secret is shorter than MIN_SECRET bytes."""
    value, path = env.get(SECRET_ENV), env.get(SECRET_FILE_ENV)
    if value and path:
        raise LaunchError(f"both {SECRET_ENV} and {SECRET_FILE_ENV} are set; set one")
    if not value and not path:
        raise LaunchError(f"a launch over several nodes needs the job's shared secret, so "
                          f"that no one else can join or stop it: {HOW_TO_SET}")
    where = SECRET_ENV
    if path:
        where = f"{SECRET_FILE_ENV}={path}"
        secret = _read_secret_file(path)
    else:
        secret = (value or "").encode()
    if len(secret) < MIN_SECRET:
        raise LaunchError(f"the secret in {where} has {len(secret)} bytes; use at least "
                          f"{MIN_SECRET} random ones ({HOW_TO_SET})")
    return secret


def _read_secret_file(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise LaunchError(f"{SECRET_FILE_ENV}={path}: cannot open it ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LaunchError(f"{SECRET_FILE_ENV}={path} is not a regular file")
        if info.st_mode & 0o077:
            raise LaunchError(f"{SECRET_FILE_ENV}={path} can be read by others (mode "
                              f"{stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`")
        if info.st_size > MAX_SECRET_FILE:
            raise LaunchError(f"{SECRET_FILE_ENV}={path} has {info.st_size} bytes; a secret "
                              f"file holds one line (at most {MAX_SECRET_FILE} bytes)")
        return os.read(fd, MAX_SECRET_FILE).strip()
    finally:
        os.close(fd)


def nonce() -> str:
    return secrets.token_hex(16)


def canonical(fields: Mapping[str, object]) -> bytes:
    """The bytes a MAC covers: the message without its `mac`, keys sorted, no spaces."""
    body = {k: v for k, v in fields.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def mac(key: bytes, purpose: str, *parts: bytes | str) -> str:
    h = hmac.new(key, purpose.encode(), hashlib.sha256)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def verify(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected, given)


def link_key(secret: bytes, node0_nonce: str, joiner_nonce: str) -> bytes:
    """The key of one node 0 <-> node k link, fresh for every rendezvous."""
    return hmac.new(secret, f"control|{node0_nonce}|{joiner_nonce}".encode(),
                    hashlib.sha256).digest()


def encode(message: _Message | Mapping[str, object]) -> bytes:
    data = message.model_dump(exclude_none=True) if isinstance(message, BaseModel) else message
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def parse(model: type[_Message], line: bytes, max_line: int = MAX_LINE
          ) -> tuple[_Message | None, str]:
    """(message, "") or (None, why it is not one), `why` safe to print."""
    if len(line) > max_line:
        return None, f"a line of {len(line)} bytes (at most {max_line})"
    try:
        return model.model_validate_json(line), ""
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "message"
        return None, one_line(f"{where}: {first.get('msg', 'invalid')}", 200)


def admit(link, fields: Mapping[str, object], given_mac: str | None, seq: int, origin: int,
          peer: int, node_rank: int, nnodes: int) -> str | None:
    """Why a message between launchers must be dropped, or None to take it: it must carry the
    link's MAC over its fields, be next in the link's sequence, and speak for a node it may
    speak for (node 0 hears each node for itself; the others hear node 0 relay any node).
    An authentic message in sequence advances the link's sequence, even if refused after."""
    direction = "down" if link.joiner else "up"
    if not verify(mac(link.key, direction, canonical(fields)), given_mac):
        return "it failed authentication"
    if seq != link.received:
        return f"sequence number {seq}, expected {link.received} (a replay?)"
    link.received += 1
    origin_ok = (origin == peer if node_rank == 0
                 else 0 <= origin < nnodes and origin != node_rank)
    if not origin_ok:
        return f"it speaks for node {origin}"
    return None


class CappedWarnings:
    """Warnings about dropped messages, at most `limit` per launch, then one line that says
    the rest are not reported (a flood of bad messages must not flood the console)."""

    def __init__(self, warn: Callable[[str], None], what: str, limit: int = 20):
        self._warn, self._what, self._limit, self._count = warn, what, limit, 0

    def __call__(self, text: str) -> None:
        self._count += 1
        if self._count <= self._limit:
            self._warn(text)
        elif self._count == self._limit + 1:
            self._warn(f"more dropped {self._what} are not reported")


def receive(model: type[_Message], link, line: bytes, peer: int, node_rank: int, nnodes: int,
            max_line: int = MAX_LINE) -> tuple[dict | None, str]:
    """The fields (None values left out) of the `model` message on `line` from `peer`, if it
    parses and `admit` takes it; else (None, why it was dropped)."""
    message, why = parse(model, line, max_line)
    if message is None:
        return None, why
    fields = message.model_dump(exclude_none=True)
    why = admit(link, fields, message.mac, message.seq, message.node, peer, node_rank, nnodes)
    return (None, why) if why is not None else (fields, "")


def send(link, fields: Mapping[str, object], timeout: float) -> None:
    """Send `fields` (no seq, no mac) on `link` with its next sequence number and its MAC.
    Best effort: a peer that cannot take it within `timeout` is found dead by its silence."""
    message = {**fields, "seq": link.sent}
    message["mac"] = mac(link.key, "up" if link.joiner else "down", canonical(message))
    link.sent += 1
    try:
        link.sock.settimeout(timeout)
        link.sock.sendall(encode(message))
    except OSError:
        pass
    finally:
        try:
            link.sock.setblocking(False)
        except OSError:
            pass
