"""The drill's mixed load: tasks (chat, some streamed), synchronous chat (some streamed), embeddings, ONNX
predictions, workflow runs with `for_each`, and batches, from client threads spread over both API processes.

Every provider call carries a `[[tag:N]]` marker of its own, so that the fake provider can say how many times
each one reached it. What the API accepted (a 2xx) is recorded, by id; what it refused or could not answer is
counted by reason.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

WORKFLOW = "drill_fanout"
WORKFLOW_DEFINITION: dict[str, Any] = {
    "name": WORKFLOW,
    "steps": [
        {
            "id": "fan",
            "type": "chat",
            "model": "chat-default",
            "for_each": "{{ input.things }}",
            "max_parallel": 3,
            "input": {"messages": [{"role": "user", "content": "{{ item }}"}]},
        },
        {
            "id": "sum",
            "type": "chat",
            "model": "chat-default",
            "input": {"messages": [{"role": "user", "content": "{{ input.tag }} {{ steps.fan.output | length }}"}]},
        },
    ],
}
# Terminal events of every kind of object: each is one (webhook, event) pair to deliver.
SUBSCRIBED = [
    "task.succeeded",
    "task.failed",
    "task.canceled",
    "run.succeeded",
    "run.failed",
    "run.canceled",
    "batch.*",
]
FEATURES = [0.9, 0.2, 68.4, 1.0, 2.0, 0.14, 0.05, 286.5]

# kind → weight; a batch counts as many objects as it has lines, a run as its items plus its last step.
KINDS = {
    "task.chat": 30,
    "task.stream": 6,
    "chat.sync": 10,
    "chat.stream": 8,
    "embed.sync": 8,
    "predict.sync": 8,
    "run": 5,
    "batch": 2,
}
BATCH_LINES = 10
RUN_ITEMS = 4


@dataclass
class Accepted:
    """What the API answered 2xx for, and what it did not."""

    tasks: dict[str, str] = field(default_factory=dict)  # task id → kind
    runs: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    objects: int = 0  # tasks the accepted requests stand for (a run's items and a batch's lines included)
    refused: Counter[str] = field(default_factory=Counter)  # "kind status" or "kind ErrorName" → count
    # Idempotency-Key → the ids its 2xx answers named (a client that lost its answer sends again: one id)
    replayed: dict[str, set[str]] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)


class Load:
    """Client threads sending the mix until `stop()`; `accepted` is filled as they go."""

    def __init__(
        self, urls: list[str], key: str, receiver_url: str, *, threads: int, seed: int, pace_s: float = 0.0
    ) -> None:
        self.urls = urls
        self.key = key
        self.receiver_url = receiver_url
        self.threads = threads
        self.pace_s = pace_s
        self.accepted = Accepted()
        self._lock = threading.Lock()
        self._tags = itertools.count(1)
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._threads: list[threading.Thread] = []

    # --- set-up ----------------------------------------------------------------------------------------------

    def client(self, url: str | None = None, timeout: float = 60) -> httpx.Client:
        return httpx.Client(
            base_url=url or self.urls[0], headers={"Authorization": f"Bearer {self.key}"}, timeout=timeout
        )

    def prepare(self) -> dict[str, str]:
        """Register the workflow and the subscription; returns receiver path → secret to verify with."""
        with self.client() as c:
            ok = c.post("/v1/workflows", json=WORKFLOW_DEFINITION)
            ok.raise_for_status()
            sub = c.post("/v1/webhooks", json={"url": f"{self.receiver_url}/sub", "events": SUBSCRIBED})
            sub.raise_for_status()
            tenant_secret = c.get("/v1/webhooks/signing-secret").json()["secret"]
        return {"/sub": sub.json()["secret"], "/obj": tenant_secret}

    # --- running ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(i,), name=f"drill-load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def objects(self) -> int:
        with self._lock:
            return self.accepted.objects

    def _tag(self) -> int:
        with self._lock:
            return next(self._tags)

    def _text(self, extra: bool = True) -> str:
        """A prompt with a tag of its own; some fail once at the provider, some take a while."""
        tag = self._tag()
        text = f"drill {tag} [[tag:{tag}]]"
        if extra:
            with self._lock:
                roll = self._rng.random()
            if roll < 0.15:
                text += " [[fail:503:1]]"
            elif roll < 0.35:
                text += " [[sleep:400]]"
        return text

    def _loop(self, i: int) -> None:
        rng = random.Random(i * 7919)
        kinds, weights = list(KINDS), list(KINDS.values())
        clients = [self.client(url) for url in self.urls]
        try:
            while not self._stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                client = rng.choice(clients)
                with self._lock:
                    self.accepted.sent[kind] += 1
                try:
                    getattr(self, "_" + kind.replace(".", "_"))(client, rng)
                except httpx.HTTPError as exc:
                    self._refused(kind, type(exc).__name__)
                if self.pace_s:
                    time.sleep(rng.uniform(0, 2 * self.pace_s))
        finally:
            for c in clients:
                c.close()

    def _refused(self, kind: str, reason: str) -> None:
        with self._lock:
            self.accepted.refused[f"{kind} {reason}"] += 1

    def _task(self, kind: str, task_id: str | None) -> None:
        if task_id:
            with self._lock:
                self.accepted.tasks[task_id] = kind
                self.accepted.objects += 1

    def _check(self, kind: str, response: httpx.Response) -> bool:
        if response.is_success:
            return True
        self._refused(kind, str(response.status_code))
        return False

    def _post_idempotent(self, kind: str, path: str, body: dict[str, Any], rng: random.Random) -> str | None:
        """POST with an Idempotency-Key, sent again (to either API) while the answer is lost or a 5xx, as a
        careful client does; every 2xx must name the same object. Returns its id, or None."""
        key = f"drill-{self._tag()}"
        headers = {"Idempotency-Key": key}
        for attempt in range(4):
            if attempt:
                time.sleep(rng.uniform(0.5, 2.0))
            url = rng.choice(self.urls)
            try:
                with self.client(url, timeout=30) as client:
                    response = client.post(path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                self._refused(kind, type(exc).__name__)
                continue
            if response.status_code >= 500:
                self._refused(kind, str(response.status_code))
                continue
            if not self._check(kind, response):
                return None
            object_id: str = response.json()["id"]
            with self._lock:
                self.accepted.replayed.setdefault(key, set()).add(object_id)
                if attempt:
                    self.accepted.refused[f"{kind} sent again, answered"] += 1
            return object_id
        return None

    # --- the kinds -------------------------------------------------------------------------------------------

    def _task_chat(self, client: httpx.Client, rng: random.Random) -> None:
        body: dict[str, Any] = {
            "type": "chat",
            "model": "chat-default",
            "input": {"messages": [{"role": "user", "content": self._text()}]},
        }
        if rng.random() < 0.15:
            body["webhook"] = {"url": f"{self.receiver_url}/obj", "events": ["task.succeeded", "task.failed"]}
        task_id = self._post_idempotent("task.chat", "/v1/tasks", body, rng)
        if task_id:
            self._task("task.chat", task_id)

    def _task_stream(self, client: httpx.Client, rng: random.Random) -> None:
        body = {
            "type": "chat",
            "model": "chat-default",
            "options": {"stream": True},
            "input": {"messages": [{"role": "user", "content": self._text()}]},
        }
        response = client.post("/v1/tasks", json=body)
        if self._check("task.stream", response):
            self._task("task.stream", response.json()["id"])

    def _chat_sync(self, client: httpx.Client, rng: random.Random) -> None:
        body = {"model": "chat-default", "messages": [{"role": "user", "content": self._text()}]}
        response = client.post("/v1/chat/completions", json=body)
        if self._check("chat.sync", response):
            self._task("chat.sync", response.headers.get("x-switchyard-task-id"))

    def _chat_stream(self, client: httpx.Client, rng: random.Random) -> None:
        body = {"model": "chat-default", "stream": True, "messages": [{"role": "user", "content": self._text()}]}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if not self._check("chat.stream", response):
                return
            task_id = response.headers.get("x-switchyard-task-id")
            done = False
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]" and task_id is None:
                    task_id = json.loads(line[6:])["id"].removeprefix("chatcmpl-")
                done = done or line == "data: [DONE]"
        # The stream's headers were a 200: the task was accepted, whether or not the stream ran to its end.
        self._task("chat.stream", task_id)
        if not done:
            self._refused("chat.stream", "cut-short")

    def _embed_sync(self, client: httpx.Client, rng: random.Random) -> None:
        response = client.post("/v1/embeddings", json={"model": "embed-default", "input": [self._text(), "second"]})
        if self._check("embed.sync", response):
            self._task("embed.sync", response.headers.get("x-switchyard-task-id"))

    def _predict_sync(self, client: httpx.Client, rng: random.Random) -> None:
        row = [value * rng.uniform(0.5, 1.5) for value in FEATURES]
        response = client.post("/v1/predict/risk-classifier", json={"inputs": {"features": [row]}})
        if self._check("predict.sync", response):
            self._task("predict.sync", response.json().get("task_id"))

    def _run(self, client: httpx.Client, rng: random.Random) -> None:
        things = [self._text(extra=False) for _ in range(RUN_ITEMS)]
        body: dict[str, Any] = {"input": {"things": things, "tag": self._text(extra=False)}}
        if rng.random() < 0.3:
            body["webhook"] = {"url": f"{self.receiver_url}/obj", "events": ["run.succeeded", "run.failed"]}
        run_id = self._post_idempotent("run", f"/v1/workflows/{WORKFLOW}/runs", body, rng)
        if run_id:
            with self._lock:
                self.accepted.runs.append(run_id)
                self.accepted.objects += RUN_ITEMS + 2

    def _batch(self, client: httpx.Client, rng: random.Random) -> None:
        lines = [
            {
                "custom_id": f"line-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "chat-default", "messages": [{"role": "user", "content": self._text()}]},
            }
            for n in range(BATCH_LINES)
        ]
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        uploaded = client.post("/v1/files", files={"file": ("drill.jsonl", content)}, data={"purpose": "batch"})
        if not self._check("batch", uploaded):
            return
        body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        response = client.post("/v1/batches", json=body)
        if self._check("batch", response):
            with self._lock:
                self.accepted.batches.append(response.json()["id"])
                self.accepted.objects += BATCH_LINES + 1
