"""API keys managed over the API (admin): made, listed, read, changed and revoked; revocation and changes seen at
once by every API process (Redis pub/sub), expired keys refused, roles and tenants kept apart; the command line's
`keys create/list/revoke`; the tenant's limits and budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from switchyard.gateway_api.state import KeyCache
from switchyard.tenancy.service import Principal
from tests.support import Process, Stack, cli, free_port, wait_http, wait_until
from tests.tenancy_support import key_id_of, tenancy_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from tenancy_stack(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.new_key("keys-acme", "admin")) as client:
        yield client


@pytest.fixture(scope="module")
def second_api(stack: Stack) -> Iterator[str]:
    """Another API process on the same database and Redis, keeping keys for 5 minutes: only an invalidation
    message can make it forget one."""
    port = free_port()
    proc: Process = stack.start("api-2", cli("api", "--port", str(port)), env={"SWITCHYARD_API_KEY_CACHE_S": "300"})
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    yield url
    proc.stop()


def _with(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_create_list_get_patch_revoke(admin: httpx.Client) -> None:
    made = admin.post(
        "/v1/keys",
        json={
            "name": "batch jobs",
            "role": "member",
            "models": ["chat-default", "embed-default"],
            "limits": {"rpm": 60, "max_concurrent": 4},
            "budget": {"daily_usd": 5},
            "tier": "standard",
            "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        },
    )
    assert made.status_code == 201, made.text
    body = made.json()
    plain, key_id = body["key"], body["id"]
    assert plain.startswith("sy_")
    assert plain.startswith(body["prefix"])
    assert body["models"] == ["chat-default", "embed-default"]
    assert body["limits"] == {"rpm": 60, "max_concurrent": 4}
    assert body["tier"] == "standard"
    assert body["revoked_at"] is None
    # The new key works, with its own role.
    with _with(str(admin.base_url), plain) as member:
        assert member.get("/v1/tasks").status_code == 200
        assert member.get("/v1/keys").status_code == 403

    listed = admin.get("/v1/keys").json()
    assert key_id in [k["id"] for k in listed["data"]]
    assert all("key" not in k and "key_hash" not in k for k in listed["data"])
    assert plain not in str(listed)
    fetched = admin.get(f"/v1/keys/{key_id}").json()
    assert fetched["name"] == "batch jobs"
    assert "key" not in fetched

    patched = admin.patch(f"/v1/keys/{key_id}", json={"name": "nightly", "models": None, "limits": {"rpm": 10}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "nightly"
    assert patched.json()["models"] is None
    assert patched.json()["limits"] == {"rpm": 10}
    assert patched.json()["budget"] == {"daily_usd": 5.0}  # not sent: unchanged

    assert admin.delete(f"/v1/keys/{key_id}").status_code == 204
    assert admin.delete(f"/v1/keys/{key_id}").status_code == 204  # again: nothing more to do
    with _with(str(admin.base_url), plain) as revoked:
        refused = revoked.get("/v1/tasks")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
    assert key_id not in [k["id"] for k in admin.get("/v1/keys").json()["data"]]
    with_revoked = admin.get("/v1/keys", params={"revoked": "true"}).json()["data"]
    assert next(k for k in with_revoked if k["id"] == key_id)["revoked_at"] is not None
    assert admin.patch(f"/v1/keys/{key_id}", json={"name": "x"}).status_code == 409


def test_keys_page_with_a_cursor(admin: httpx.Client) -> None:
    made = [admin.post("/v1/keys", json={"name": f"page-{i}", "role": "viewer"}).json()["id"] for i in range(5)]
    seen: list[str] = []
    after = None
    while True:
        page = admin.get("/v1/keys", params={"limit": 2, **({"after": after} if after else {})}).json()
        assert len(page["data"]) <= 2
        seen += [k["id"] for k in page["data"]]
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(seen, reverse=True)  # newest first
    assert set(made) <= set(seen)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tier": "gold"}, "tier"),
        ({"models": ["chat-default", "nope"]}, "models[1]"),
        ({"role": "owner"}, "role"),
        ({"limits": {"rpm": 0}}, "limits.rpm"),
        ({"budget": {"weekly_usd": 3}}, "budget.weekly_usd"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"key_hash": "x"}, "key_hash"),
    ],
)
def test_bad_key_bodies_are_422_naming_the_field(admin: httpx.Client, body: dict[str, object], param: str) -> None:
    answer = admin.post("/v1/keys", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == param
    if param == "tier":
        assert "gold" in answer.json()["error"]["message"]
        assert "standard" in answer.json()["error"]["message"]


def test_tier_on_patch_and_tenant_budget_must_exist(admin: httpx.Client) -> None:
    key_id = admin.post("/v1/keys", json={"role": "viewer"}).json()["id"]
    assert admin.patch(f"/v1/keys/{key_id}", json={"tier": "gold"}).json()["error"]["param"] == "tier"
    assert admin.put("/v1/tenant/budget", json={"tier": "gold"}).json()["error"]["param"] == "tier"


def test_members_and_viewers_may_not_manage(stack: Stack) -> None:
    for role in ("member", "viewer"):
        with stack.client(stack.new_key("keys-acme", role)) as client:
            for method, path, body in (
                ("post", "/v1/keys", {"role": "viewer"}),
                ("get", "/v1/keys", None),
                ("get", "/v1/keys/key_x", None),
                ("patch", "/v1/keys/key_x", {"name": "x"}),
                ("delete", "/v1/keys/key_x", None),
                ("get", "/v1/tenant/limits", None),
                ("put", "/v1/tenant/limits", {"rpm": 1}),
                ("get", "/v1/tenant/budget", None),
                ("put", "/v1/tenant/budget", {"daily_usd": 1}),
                ("get", "/v1/audit", None),
                ("get", "/v1/webhooks", None),
            ):
                answer = client.request(method, path, json=body)
                assert answer.status_code == 403, (role, method, path, answer.text)
                assert answer.json()["error"]["type"] == "permission_error"


def test_another_tenants_key_is_404(stack: Stack, admin: httpx.Client) -> None:
    theirs = admin.post("/v1/keys", json={"role": "viewer"}).json()["id"]
    with stack.client(stack.new_key("keys-other", "admin")) as other:
        for method, body in (("get", None), ("patch", {"name": "mine now"}), ("delete", None)):
            answer = other.request(method, f"/v1/keys/{theirs}", json=body)
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["type"] == "not_found_error"
        assert theirs not in str(other.get("/v1/keys", params={"revoked": "true"}).json())
    assert admin.get(f"/v1/keys/{theirs}").json()["revoked_at"] is None


def test_revocation_is_seen_at_once_by_a_second_api_process(admin: httpx.Client, second_api: str) -> None:
    made = admin.post("/v1/keys", json={"role": "member"}).json()
    with _with(second_api, made["key"]) as elsewhere:
        # The second process verifies the key and keeps it (for 5 minutes, by its settings).
        assert elsewhere.get("/v1/tasks").status_code == 200
        assert elsewhere.get("/v1/tasks").status_code == 200
        assert admin.delete(f"/v1/keys/{made['id']}").status_code == 204
        refused = elsewhere.get("/v1/tasks")
        assert refused.status_code == 401, refused.text


def test_a_change_missed_while_the_subscription_was_down_is_not_served_for_long(
    stack: Stack, admin: httpx.Client, second_api: str
) -> None:
    made = admin.post("/v1/keys", json={"role": "viewer"}).json()
    with _with(second_api, made["key"]) as elsewhere:
        assert elsewhere.get("/v1/tasks").status_code == 200  # cached, for 5 minutes by its settings
        # Redis drops every subscriber's connection, and the revocation happens while nobody hears of it.
        stack.redis.client_kill_filter(_type="pubsub")
        stack.sql("UPDATE api_keys SET revoked_at = now() WHERE id = %s RETURNING id", made["id"])
        wait_until(
            lambda: elsewhere.get("/v1/tasks").status_code == 401,
            timeout=8,
            interval=0.2,
            what="the second API process to stop trusting its cached key",
        )


def test_a_change_is_seen_at_once_by_a_second_api_process(admin: httpx.Client, second_api: str) -> None:
    made = admin.post("/v1/keys", json={"role": "viewer", "expires_at": None}).json()
    with _with(second_api, made["key"]) as elsewhere:
        assert elsewhere.get("/v1/tasks").status_code == 200
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        assert admin.patch(f"/v1/keys/{made['id']}", json={"expires_at": soon}).status_code == 200
        time.sleep(2.2)
        refused = elsewhere.get("/v1/tasks")
        assert refused.status_code == 401, refused.text
        assert "expired" in refused.json()["error"]["message"]


def test_an_expired_key_is_refused_naming_its_expiry(admin: httpx.Client) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    made = admin.post("/v1/keys", json={"role": "viewer", "expires_at": soon.isoformat()}).json()
    with _with(str(admin.base_url), made["key"]) as client:
        assert client.get("/v1/tasks").status_code == 200  # and now it is cached
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
        for _ in range(2):  # from the cache, then from the database
            refused = client.get("/v1/tasks")
            assert refused.status_code == 401
            assert refused.json()["error"]["type"] == "authentication_error"
            assert "expired" in refused.json()["error"]["message"]
            time.sleep(1.1)


def test_tenant_limits_and_budget(admin: httpx.Client) -> None:
    assert admin.get("/v1/tenant/limits").json() == {
        "rpm": None,
        "tpm": None,
        "rph": None,
        "rpd": None,
        "max_concurrent": None,
    }
    put = admin.put("/v1/tenant/limits", json={"rpm": 1000, "tpm": 100000})
    assert put.status_code == 200, put.text
    assert put.json()["rpm"] == 1000
    assert put.json()["rph"] is None
    assert admin.get("/v1/tenant/limits").json()["tpm"] == 100000
    assert admin.put("/v1/tenant/limits", json={"rpm": -1}).json()["error"]["param"] == "rpm"
    assert admin.put("/v1/tenant/limits", json={"burst": 3}).json()["error"]["param"] == "burst"

    budget = admin.put("/v1/tenant/budget", json={"daily_usd": 25, "tier": "standard"})
    assert budget.status_code == 200, budget.text
    assert budget.json() == {"max_per_call_usd": None, "daily_usd": 25.0, "monthly_usd": None, "tier": "standard"}
    assert admin.put("/v1/tenant/budget", json={"tier": "low"}).json()["daily_usd"] is None  # the whole object
    assert admin.get("/v1/tenant/budget").json()["tier"] == "low"
    assert admin.put("/v1/tenant/budget", json={}).json()["tier"] is None


def test_cli_keys_create_list_revoke(stack: Stack, admin: httpx.Client) -> None:
    out = stack.run_cli(
        "keys",
        "create",
        "--tenant",
        "keys-acme",
        "--role",
        "member",
        "--name",
        "from the shell",
        "--models",
        "chat-default,embed-default",
        "--tier",
        "low",
        "--expires-in",
        "30d",
    )
    plain = out.strip().splitlines()[-1]
    key_id = key_id_of(admin, plain)
    made = admin.get(f"/v1/keys/{key_id}").json()
    assert made["name"] == "from the shell"
    assert made["tier"] == "low"
    assert made["created_by"] == "cli"
    assert made["models"] == ["chat-default", "embed-default"]
    assert made["expires_at"] is not None

    listed = stack.run_cli("keys", "list", "--tenant", "keys-acme")
    assert listed.splitlines()[0].split("\t")[:3] == ["id", "prefix", "role"]
    assert key_id in listed
    assert plain not in listed

    with _with(stack.url, plain) as member:
        assert member.get("/v1/tasks").status_code == 200
        assert "revoked key" in stack.run_cli("keys", "revoke", key_id)
        assert member.get("/v1/tasks").status_code == 401
    assert key_id not in stack.run_cli("keys", "list", "--tenant", "keys-acme")
    assert key_id in stack.run_cli("keys", "list", "--tenant", "keys-acme", "--revoked")
    revoked = admin.get("/v1/audit", params={"action": "key.revoke", "target_id": key_id}).json()["data"]
    assert [(e["actor"], e["action"]) for e in revoked] == [("cli", "key.revoke")]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--tier", "gold"), "unknown tier 'gold'"),
        (("--models", "nope"), "unknown model 'nope'"),
        (("--expires-in", "soon"), "not a duration"),
    ],
)
def test_cli_keys_create_refuses_bad_options(stack: Stack, args: tuple[str, ...], expected: str) -> None:
    import subprocess

    done = subprocess.run(
        cli("keys", "create", "--tenant", "keys-acme", *args), env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_revoke_of_an_unknown_key_is_one_line(stack: Stack) -> None:
    import subprocess

    done = subprocess.run(cli("keys", "revoke", "key_nope"), env=stack.env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "no key 'key_nope'" in done.stderr


# --- the cache itself ---------------------------------------------------------------------------------------------


def _principal(key_id: str = "key_a", tenant_id: str = "ten_a") -> Principal:
    return Principal(tenant_id=tenant_id, role="admin", key_id=key_id)


def test_key_cache_keeps_entries_briefly_unless_its_subscription_is_live() -> None:
    cache = KeyCache(ttl_s=60, short_ttl_s=0.2)
    cache.put("h", _principal(), cache.generation)
    assert cache.get("h") is not None
    time.sleep(0.3)
    assert cache.get("h") is None  # not subscribed (embedded mode, or Redis away): the short TTL
    cache.live_until = time.monotonic() + 10
    assert cache.get("h") is not None  # subscribed: the long TTL
    cache.live_until = 0.0
    assert cache.get("h") is None


def test_key_cache_drops_by_key_and_by_tenant_and_ignores_stale_lookups() -> None:
    cache = KeyCache(ttl_s=60, short_ttl_s=60)
    cache.put("a", _principal("key_a", "ten_1"), cache.generation)
    cache.put("b", _principal("key_b", "ten_1"), cache.generation)
    cache.put("c", _principal("key_c", "ten_2"), cache.generation)
    cache.drop(key_id="key_a")
    assert cache.get("a") is None
    assert cache.get("b") is not None
    cache.drop(tenant_id="ten_1")
    assert cache.get("b") is None
    assert cache.get("c") is not None
    # A lookup that began before a drop does not put what it read.
    started = cache.generation
    cache.drop(key_id="key_z")
    cache.put("z", _principal("key_z"), started)
    assert cache.get("z") is None
