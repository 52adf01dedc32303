"""Bearer JWTs beside API keys, verified against a JWKS server this test runs: the tenant and role from the
claims, every way a token can be wrong answered 401 with what is wrong, and a rotated signing key taken without
a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import Stack
from tests.tenancy_support import Jwks, tenancy_stack

ISSUER = "https://idp.example.test/"
AUDIENCE = "switchyard"


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, jwks: Jwks) -> Iterator[Stack]:
    env = {
        "SWITCHYARD_JWT_JWKS_URL": jwks.url,
        "SWITCHYARD_JWT_ISSUER": ISSUER,
        "SWITCHYARD_JWT_AUDIENCE": AUDIENCE,
        "SWITCHYARD_JWT_TENANT_CLAIM": "org",
        "SWITCHYARD_JWT_JWKS_REFRESH_COOLDOWN_S": "0.5",
    }
    yield from tenancy_stack(tmp_path_factory.mktemp("jwt"), env=env)


def claims(**overrides: object) -> dict[str, object]:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "org": "jwt-corp", "role": "admin", **overrides}


def call(stack: Stack, token: str, method: str = "get", path: str = "/v1/tasks", **kw: object) -> httpx.Response:
    with stack.client(token) as client:
        return client.request(method, path, **kw)  # type: ignore[arg-type]


def refused(stack: Stack, token: str) -> str:
    answer = call(stack, token)
    assert answer.status_code == 401, answer.text
    error = answer.json()["error"]
    assert error["type"] == "authentication_error"
    message: str = error["message"]
    return message


def test_a_good_token_is_its_tenant_and_role(stack: Stack, jwks: Jwks) -> None:
    token = jwks.token(claims())
    assert call(stack, token).status_code == 200
    # The tenant was made on first use; the subject is the actor of what the token does.
    made = call(stack, token, "post", "/v1/keys", json={"role": "viewer"})
    assert made.status_code == 201, made.text
    assert made.json()["created_by"] == "jwt:alice"
    audit = call(stack, token, "get", "/v1/audit").json()["data"]
    assert audit[0]["actor"] == "jwt:alice"
    assert audit[0]["action"] == "key.create"
    # A key made by the token belongs to the token's tenant.
    with stack.client(made.json()["key"]) as viewer:
        assert viewer.get("/v1/tasks").status_code == 200
    # The role comes from the claim.
    viewer_token = jwks.token(claims(sub="bob", role="viewer"))
    assert call(stack, viewer_token).status_code == 200
    denied = call(stack, viewer_token, "post", "/v1/keys", json={"role": "viewer"})
    assert denied.status_code == 403
    # Another tenant's token sees nothing of jwt-corp's.
    other = jwks.token(claims(sub="carol", org="jwt-other"))
    assert call(stack, other, "get", f"/v1/keys/{made.json()['id']}").status_code == 404


def test_api_keys_still_work_beside_jwts(stack: Stack) -> None:
    with stack.client(stack.new_key("jwt-keys", "viewer")) as client:
        assert client.get("/v1/tasks").status_code == 200
    assert "invalid API key" in refused(stack, "sy_not-a-real-key")


def test_bad_signature(stack: Stack, jwks: Jwks) -> None:
    forged = jwks.token(claims(), key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert "signature" in refused(stack, forged)


def test_wrong_audience(stack: Stack, jwks: Jwks) -> None:
    assert "audience" in refused(stack, jwks.token(claims(aud="someone-else")))


def test_wrong_issuer(stack: Stack, jwks: Jwks) -> None:
    assert "issuer" in refused(stack, jwks.token(claims(iss="https://evil.example.test/")))


def test_expired(stack: Stack, jwks: Jwks) -> None:
    assert "expired" in refused(stack, jwks.token(claims(), ttl_s=-120))


@pytest.mark.parametrize(
    ("missing", "named"), [({"org": None}, "'org' claim"), ({"sub": None}, "'sub' claim"), ({"role": None}, "'role'")]
)
def test_missing_claims(stack: Stack, jwks: Jwks, missing: dict[str, object], named: str) -> None:
    assert named in refused(stack, jwks.token(claims(**missing)))


def test_a_role_that_is_not_one_of_ours(stack: Stack, jwks: Jwks) -> None:
    assert "'superuser'" in refused(stack, jwks.token(claims(role="superuser")))


def test_a_malformed_token(stack: Stack) -> None:
    assert "well-formed JWT" in refused(stack, "not.a.jwt")


def test_rotated_signing_key_is_taken_without_a_restart(stack: Stack, jwks: Jwks) -> None:
    assert call(stack, jwks.token(claims())).status_code == 200
    fetched = jwks.fetches
    # A key id nobody publishes is refused.
    stranger = jwks.token(claims(), kid="k9", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert "does not publish" in refused(stack, stranger)
    # The identity provider rotates: a new key id appears in the JWKS and new tokens are signed with it.
    time.sleep(0.6)  # past the refresh cooldown the stranger's token started
    jwks.add_key("k2")
    rotated = jwks.token(claims(sub="dave"), kid="k2")
    answer = call(stack, rotated)
    assert answer.status_code == 200, answer.text
    assert jwks.fetches > fetched
