"""A batch job through the official `openai` SDK: upload a JSONL file, create a batch, follow it, read the output.

Run it with the service up (`make dev` in another terminal prints the URL and a key):

    SWITCHYARD_API_KEY=sy_... python examples/batch.py

SWITCHYARD_URL defaults to http://127.0.0.1:8000. Each line of the file is one request
(`{"custom_id", "method": "POST", "url", "body"}`); Switchyard's own workers run every line as a task (routed,
retried, failed over and costed like any other), on any provider. One line here asks the fake provider to fail
on purpose, so the error file has something in it. Exits 1 if the batch does not complete.
"""

import json
import os
import sys
import time

from openai import OpenAI

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

client = OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0)

QUESTIONS = ["What is a batch job?", "Name a colour.", "Say hello.", "This one fails [[fail:400]]"]


def main() -> int:
    lines = [
        {
            "custom_id": f"question-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "chat-default", "messages": [{"role": "user", "content": question}]},
        }
        for i, question in enumerate(QUESTIONS)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("questions.jsonl", content), purpose="batch")
    print(f"uploaded {upload.id} ({upload.bytes} bytes, {len(lines)} lines)")

    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"example": "examples/batch.py"},
    )
    print(f"batch {batch.id}: {batch.status}")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
        counts = batch.request_counts
        if counts is not None:
            print(f"  {batch.status}: {counts.completed} completed, {counts.failed} failed of {counts.total}")
    if batch.status != "completed":
        print(f"batch ended {batch.status}: {batch.errors}", file=sys.stderr)
        return 1

    # Output lines follow the input's order; each carries its custom_id and the response an endpoint would give.
    if batch.output_file_id:
        for raw in client.files.content(batch.output_file_id).text.splitlines():
            line = json.loads(raw)
            answer = line["response"]["body"]["choices"][0]["message"]["content"]
            print(f"  {line['custom_id']}: {answer!r}")
    if batch.error_file_id:
        for raw in client.files.content(batch.error_file_id).text.splitlines():
            line = json.loads(raw)
            status = (line.get("response") or {}).get("status_code")
            print(f"  {line['custom_id']} failed ({status})")
    print(f"completed: {batch.request_counts.completed} lines, cost ${getattr(batch, 'cost_usd', 0) or 0:.8f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
