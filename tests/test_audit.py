"""The audit log: every admin action (keys, the tenant's limits and budget, webhooks, workflow registrations)
leaves one entry with its actor and what changed, never a secret; GET /v1/audit pages it, newest first."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support import Stack
from tests.tenancy_support import key_id_of, tenancy_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from tenancy_stack(tmp_path_factory.mktemp("audit"), env={"SWITCHYARD_WEBHOOK_ALLOW_PRIVATE": "true"})


def latest(client: httpx.Client, **params: str) -> dict[str, object]:
    page = client.get("/v1/audit", params={"limit": 1, **params})
    assert page.status_code == 200, page.text
    entry: dict[str, object] = page.json()["data"][0]
    return entry


def test_every_admin_action_is_recorded_with_its_actor(stack: Stack) -> None:
    plain = stack.new_key("audit-acme", "admin")
    with stack.client(plain) as admin:
        me = key_id_of(admin, plain)
        # The admin key itself was made on the command line.
        assert latest(admin, action="key.create", target_id=me)["actor"] == "cli"

        made = admin.post("/v1/keys", json={"name": "svc", "role": "member", "budget": {"daily_usd": 3}}).json()
        entry = latest(admin)
        assert (entry["actor"], entry["action"], entry["target_type"], entry["target_id"]) == (
            me,
            "key.create",
            "key",
            made["id"],
        )
        assert entry["before"] is None
        assert isinstance(entry["after"], dict)
        assert entry["after"]["budget"] == {"daily_usd": 3.0}

        admin.patch(f"/v1/keys/{made['id']}", json={"name": "svc-2"})
        entry = latest(admin)
        assert entry["action"] == "key.update"
        assert isinstance(entry["before"], dict)
        assert isinstance(entry["after"], dict)
        assert (entry["before"]["name"], entry["after"]["name"]) == ("svc", "svc-2")

        admin.delete(f"/v1/keys/{made['id']}")
        entry = latest(admin)
        assert entry["action"] == "key.revoke"
        assert isinstance(entry["after"], dict)
        assert entry["after"]["revoked_at"] is not None

        admin.put("/v1/tenant/limits", json={"rpm": 100})
        entry = latest(admin)
        assert (entry["action"], entry["target_type"], entry["actor"]) == ("tenant.limits.update", "tenant", me)
        assert isinstance(entry["before"], dict)
        assert isinstance(entry["after"], dict)
        assert (entry["before"]["rpm"], entry["after"]["rpm"]) == (None, 100)

        admin.put("/v1/tenant/budget", json={"monthly_usd": 300, "tier": "standard"})
        entry = latest(admin)
        assert entry["action"] == "tenant.budget.update"
        assert entry["after"] == {"max_per_call_usd": None, "daily_usd": None, "monthly_usd": 300.0, "tier": "standard"}

        hook = admin.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["task.*"]}).json()
        entry = latest(admin)
        assert (entry["action"], entry["target_id"], entry["actor"]) == ("webhook.create", hook["id"], me)
        admin.patch(f"/v1/webhooks/{hook['id']}", json={"events": ["run.*"]})
        entry = latest(admin)
        assert entry["action"] == "webhook.update"
        assert isinstance(entry["before"], dict)
        assert isinstance(entry["after"], dict)
        assert (entry["before"]["events"], entry["after"]["events"]) == (["task.*"], ["run.*"])
        admin.delete(f"/v1/webhooks/{hook['id']}")
        entry = latest(admin)
        assert (entry["action"], entry["after"]) == ("webhook.delete", None)

        workflow = {
            "name": "audited",
            "steps": [
                {
                    "id": "a",
                    "type": "chat",
                    "model": "chat-default",
                    "input": {"messages": [{"role": "user", "content": "hi"}]},
                }
            ],
        }
        registered = admin.post("/v1/workflows", json=workflow)
        assert registered.status_code == 201, registered.text
        entry = latest(admin)
        assert (entry["action"], entry["target_type"], entry["actor"]) == ("workflow.register", "workflow", me)
        assert entry["after"] == {"id": registered.json()["id"], "name": "audited", "version": 1}

        # Nothing secret is ever in the log: no key, no key hash, no webhook secret.
        everything = admin.get("/v1/audit", params={"limit": 100}).text
        assert made["key"] not in everything
        assert plain not in everything
        assert hook["secret"] not in everything
        assert "key_hash" not in everything
        hashes = stack.sql("SELECT key_hash FROM api_keys")
        assert not any(h in everything for (h,) in hashes)


def test_audit_pages_and_filters(stack: Stack) -> None:
    with stack.client(stack.new_key("audit-pages", "admin")) as admin:
        ids = [admin.post("/v1/keys", json={"role": "viewer", "name": f"k{i}"}).json()["id"] for i in range(5)]
        admin.delete(f"/v1/keys/{ids[0]}")
        seen: list[int] = []
        after: int | None = None
        while True:
            page = admin.get("/v1/audit", params={"limit": 2, **({"after": after} if after else {})}).json()
            seen += [e["id"] for e in page["data"]]
            after = page["next"]
            if after is None:
                break
        assert seen == sorted(seen, reverse=True)
        assert len(seen) == 7  # the CLI's key, five keys, one revocation
        revoked = admin.get("/v1/audit", params={"action": "key.revoke"}).json()["data"]
        assert [e["target_id"] for e in revoked] == [ids[0]]
        family = admin.get("/v1/audit", params={"action": "key.*", "limit": 100}).json()["data"]
        assert len(family) == 7
        on_one = admin.get("/v1/audit", params={"target_id": ids[0]}).json()["data"]
        assert [e["action"] for e in on_one] == ["key.revoke", "key.create"]


def test_another_tenants_audit_is_not_seen(stack: Stack) -> None:
    with stack.client(stack.new_key("audit-a", "admin")) as a, stack.client(stack.new_key("audit-b", "admin")) as b:
        made = a.post("/v1/keys", json={"role": "viewer"}).json()
        assert made["id"] not in b.get("/v1/audit", params={"limit": 100}).text
        assert b.get("/v1/audit", params={"target_id": made["id"]}).json()["data"] == []
