"""The decision service's front door: ASGI middleware that refuses hostile requests before BentoML parses them.

In order, for every HTTP request except the probes (/livez, /readyz, /healthz):
1. Host allow-list (400): a web page that rebinds its DNS name to 127.0.0.1 sends its own name as Host.
2. Origin (403): a browser request from a page of another origin (cross-site POST) is refused.
3. API key (401): `Authorization: Bearer <key>` or `X-API-Key: <key>`; required on every endpoint when
   the service is reachable beyond loopback, and on loopback by `api_key_on_loopback` (writes or all).
4. Content type (415): every request other than GET/HEAD must say `application/json`, so a form or
   text/plain POST is never parsed as JSON and multipart never reaches BentoML's parser.
5. Body size (413): `Content-Length` is checked before anything is read; a chunked body is read only up
   to the limit.
6. Strict JSON (400): UTF-8, one object, no NaN/Infinity, no duplicate keys, no lone surrogates.

A service bound beyond loopback without an API key refuses to start (`check_start`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from nextbest.features.settings import Settings

__all__ = ["Guard", "GuardPolicy", "UnsafeStart", "check_start", "enforce_start", "listening_host", "is_loopback", "WRITES",
           "PROBES"]

log = logging.getLogger("nextbest.serving.guard")

PROBES = frozenset({"/livez", "/readyz", "/healthz"})  # orchestrator probes: no key, any Host
WRITES = frozenset({"/decide", "/decide_batch", "/events", "/feedback", "/reload", "/campaigns/create", "/campaigns/edit",
                    "/campaigns/command", "/campaigns/run"})  # change caps, logs or state
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_KEY_CHARS = 16
_LONE_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")


class UnsafeStart(RuntimeError):
    """The service would listen beyond loopback (or was told to ask for a key) without an API key."""


def is_loopback(host: str | None) -> bool:
    """True for loopback addresses and the name localhost; False for 0.0.0.0 / :: (every interface)."""
    if not host:
        return False
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def listening_host(argv: list[str] | None = None) -> str | None:
    """The address this BentoML worker listens on, or None outside a worker.

    BentoML's arbiter binds the socket and hands the worker only its file descriptor (`--fd N`), so
    the bound address is read from the socket itself, whatever `--host` `bentoml serve` was given.
    """
    argv = sys.argv if argv is None else argv
    fd = None
    for i, arg in enumerate(argv):
        if arg == "--fd" and i + 1 < len(argv):
            fd = argv[i + 1]
        elif arg.startswith("--fd="):
            fd = arg.removeprefix("--fd=")
    if fd is None:
        return None
    try:
        with socket.socket(fileno=os.dup(int(fd))) as sock:
            name = sock.getsockname()
    except (ValueError, OSError):
        return None
    return name[0] if isinstance(name, tuple) else None


def check_start(settings: Settings, host: str | None) -> None:
    """Raise UnsafeStart (with the fix) when `host` is beyond loopback, or a key is asked for, and none is set."""
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if settings.api_key is not None and len(key) < MIN_KEY_CHARS:
        raise UnsafeStart(f"NEXTBEST_API_KEY is too short ({len(key)} characters); use at least {MIN_KEY_CHARS} random "
                          "characters, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if key:
        return
    if host is not None and not is_loopback(host):
        raise UnsafeStart(f"refusing to listen on {host} without an API key: anyone who can reach it could decide, "
                          "release caps and read profiles. Set NEXTBEST_API_KEY (callers send `Authorization: Bearer <key>`), "
                          "or bind 127.0.0.1")
    if settings.api_key_on_loopback != "none":
        raise UnsafeStart(f"NEXTBEST_API_KEY_ON_LOOPBACK={settings.api_key_on_loopback} asks for an API key but "
                          "NEXTBEST_API_KEY is not set")


def enforce_start(settings: Settings) -> None:
    """`check_start` for this process; a refused BentoML worker stops the whole server and exits 2.

    Raising would not do in a worker: BentoML's arbiter keeps the socket open and restarts the worker
    forever. In-process (tests, `to_asgi()`) UnsafeStart is raised as usual.
    """
    host = listening_host()
    try:
        check_start(settings, host)
    except UnsafeStart as err:
        if host is None:
            raise
        log.critical("%s", err)
        print(f"nextbest: {err}", file=sys.stderr, flush=True)
        os.kill(os.getppid(), signal.SIGTERM)  # the arbiter that bound the socket: close it, stop every worker
        os._exit(2)


def _host_name(value: str) -> str:
    """'Example.COM:3000' -> 'example.com', '[::1]:3000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard enforces; `from_settings` reads it from NEXTBEST_* once per worker."""

    api_key: str | None = None
    api_key_on_loopback: str = "none"  # none, writes or all
    allowed_hosts: frozenset[str] = frozenset({"localhost", "127.0.0.1", "::1"})
    max_body_bytes: int = 1_048_576
    bound_beyond_loopback: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, host: str | None = None) -> GuardPolicy:
        return cls(api_key=settings.api_key.get_secret_value() if settings.api_key else None,
                   api_key_on_loopback=settings.api_key_on_loopback,
                   allowed_hosts=frozenset(_host_name(h) for h in settings.allowed_hosts.split(",") if h.strip()),
                   max_body_bytes=settings.max_body_bytes,
                   bound_beyond_loopback=host is not None and not is_loopback(host))

    def host_allowed(self, host: str) -> bool:
        return "*" in self.allowed_hosts or _host_name(host) in self.allowed_hosts

    def key_required(self, path: str, remote: bool) -> bool:
        if remote or self.bound_beyond_loopback or self.api_key_on_loopback == "all":
            return True
        return self.api_key_on_loopback == "writes" and path in WRITES


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _reject_constant(name: str) -> None:
    raise _Refusal(400, "json_constant", f"the body contains {name}, which is not JSON; send numbers as finite values")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refusal(400, "json_constant", f"the body has the number {text[:32]}, which is not JSON-representable as a "
                                             "finite value; send finite numbers")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Refusal(400, "json_duplicate_key", f"the body repeats the key {dup[:64]!r}; send each field once")
    return out


def check_json(body: bytes) -> None:
    """Raise _Refusal unless `body` is empty or one strict JSON object."""
    if not body.strip():
        return
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(400, "json_encoding", "the body is not UTF-8; send JSON encoded as UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise _Refusal(400, "json_malformed", f"the body is not valid JSON: {err.msg} at line {err.lineno} "
                                              f"column {err.colno}") from None
    except RecursionError:
        raise _Refusal(400, "json_too_deep", "the body nests too deeply; requests are flat objects") from None
    if not isinstance(value, dict):
        raise _Refusal(400, "json_not_object", f"the body must be a JSON object, not {type(value).__name__}")
    if _LONE_SURROGATE_HINT.search(body):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _Refusal(400, "json_surrogate", "the body has a \\u escape of a lone surrogate, which is not text") from None


class Guard:
    """ASGI middleware around the BentoML app; see the module docstring for what it refuses."""

    def __init__(self, app, policy: GuardPolicy | None = None):
        self.app = app
        # Built when the app starts (first ASGI call), not at import: the worker's settings and socket.
        self.policy = policy or GuardPolicy.from_settings(Settings(), listening_host())

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # the service has no WebSocket endpoint: refuse the handshake
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._admit(scope, receive)
        except _Refusal as refusal:
            log.warning("%s %s refused: %d %s", scope["method"], scope["path"][:64], refusal.status, refusal.code)
            await _answer(send, refusal)
            return
        if body is None:
            await self.app(scope, receive, send)
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        await self.app(scope, replay, send)

    async def _admit(self, scope, receive) -> bytes | None:
        """The request's body once every check passed (None for body-less methods); raises _Refusal."""
        p = self.policy
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        hosts = headers.get("host", [])
        if len(hosts) != 1 or not p.host_allowed(hosts[0]):
            shown = repr(hosts[0][:64]) if len(hosts) == 1 else f"{len(hosts)} Host headers"
            raise _Refusal(400, "host", f"Host {shown} is not served here; allowed: {', '.join(sorted(p.allowed_hosts))} "
                                        "(set NEXTBEST_ALLOWED_HOSTS to the names callers use)")
        for origin in headers.get("origin", []):
            if not p.host_allowed(urlsplit(origin).netloc or "null"):
                raise _Refusal(403, "origin", "requests from web pages of another origin are refused")
        # The connection's own local address: a request that reached a non-loopback interface came from beyond.
        remote = scope.get("server") is not None and not is_loopback(scope["server"][0])
        if p.key_required(scope["path"], remote):
            if p.api_key is None:
                raise _Refusal(403, "no_api_key", "this service is reachable beyond loopback but has no API key; "
                                                  "the operator must set NEXTBEST_API_KEY")
            given = [v.removeprefix("Bearer ").strip() for v in headers.get("authorization", []) if v.startswith("Bearer ")]
            given += [v.strip() for v in headers.get("x-api-key", [])]
            if not any(hmac.compare_digest(g.encode(), p.api_key.encode()) for g in given):
                raise _Refusal(401, "api_key", "missing or wrong API key; send `Authorization: Bearer <key>` or "
                                               "`X-API-Key: <key>`", {"WWW-Authenticate": "Bearer"})
        if scope["method"] in BODYLESS:
            return None
        types = headers.get("content-type", [])
        if len(types) != 1 or types[0].split(";", 1)[0].strip().lower() != "application/json":
            shown = repr(types[0][:64]) if types else "none"
            raise _Refusal(415, "content_type", f"Content-Type {shown} is not accepted; send the body as "
                                                "`Content-Type: application/json`")
        lengths = headers.get("content-length", [])
        if lengths:
            try:
                declared = int(lengths[0])
            except ValueError:
                raise _Refusal(400, "content_length", "Content-Length is not a number") from None
            if declared > p.max_body_bytes:
                raise _Refusal(413, "too_large", f"the body has {declared} bytes; at most {p.max_body_bytes} are accepted "
                                                 "(split a batch into smaller requests)")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refusal(400, "disconnect", "the client left before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > p.max_body_bytes:
                raise _Refusal(413, "too_large", f"the body is larger than {p.max_body_bytes} bytes "
                                                 "(split a batch into smaller requests)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        check_json(body)
        return body


async def _answer(send, refusal: _Refusal) -> None:
    payload = json.dumps({"error": refusal.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in refusal.headers.items()]
    if refusal.status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
