"""Shared by the tests of keys, JWTs and the audit log: a stack whose config file has tiers, a JWKS server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support import Stack, free_port

TIERS = """
tiers:
  low:      {max_per_call_usd: 0.01, daily_usd: 1}
  standard: {max_per_call_usd: 0.10, daily_usd: 10, limits: {rpm: 600}}
"""
REDIS_DB = 15


def tenancy_stack(tmp: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A stack with the tiers above: the API and a control worker (no provider calls are needed)."""
    stack = Stack(tmp, redis_db=REDIS_DB, provider_worker=False, ml=False, extra_models=TIERS, env=env)
    try:
        yield stack
    finally:
        stack.close()


def key_id_of(client: httpx.Client, plain: str) -> str:
    """The id of a key, found by its prefix in the tenant's key list."""
    keys = client.get("/v1/keys", params={"limit": 100}).json()["data"]
    found: str = next(k["id"] for k in keys if plain.startswith(k["prefix"]))
    return found


class Jwks:
    """An identity provider's JWKS endpoint on 127.0.0.1, whose keys a test can rotate, and tokens signed with
    them."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        self.add_key("k1")
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                jwks.fetches += 1
                body = json.dumps(jwks.document()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = key
        return key

    def document(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys.items():
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def token(
        self,
        claims: dict[str, Any],
        *,
        kid: str = "k1",
        key: rsa.RSAPrivateKey | None = None,
        ttl_s: float = 300,
    ) -> str:
        now = int(time.time())
        body = {"iat": now, "exp": now + int(ttl_s), **claims}
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            key or self.keys[kid],
            algorithm="RS256",
            headers={"kid": kid},
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
