"""Score a CSV file with the shipped `risk-classifier` model: `POST /v1/predict/{model}`.

Run it with the service up (`make dev` in another terminal prints the URL and a key):

    SWITCHYARD_API_KEY=sy_... python examples/predict_csv.py [FILE.csv]

SWITCHYARD_URL defaults to http://127.0.0.1:8000; FILE defaults to examples/rows.csv. The same upload with curl:

    curl -s $SWITCHYARD_URL/v1/predict/risk-classifier -H "Authorization: Bearer $KEY" \\
      -H 'Content-Type: text/csv' --data-binary @examples/rows.csv

The CSV format: one row per company, 8 numbers per row, in the model's column order (docs/models.md):
leverage, volatility, esg_score, liquidity_ratio, sector_risk (1-5), country_risk (0-1), revenue_growth,
carbon_intensity. A first row that is not all numbers is a header and is skipped; its names are not matched
to anything, so the columns must be in that order. Every other cell must be a number; blank lines are
ignored. The rows become the model's one input, `features` (float32 [N, 8]); a row of another width is a 422.
The answer holds `label` per row (0 low, 1 medium, 2 high) and `probabilities` (low, medium, high).
Exits 1 if the prediction is refused.
"""

import csv
import os
import sys
from pathlib import Path

import httpx

URL = os.environ.get("SWITCHYARD_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("SWITCHYARD_API_KEY")
if not KEY:
    sys.exit("SWITCHYARD_API_KEY is not set: use the key `make dev` printed (SWITCHYARD_API_KEY=sy_... python ...)")

MODEL = "risk-classifier"
CLASSES = ["low", "medium", "high"]
path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("rows.csv")
api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

# GET /v1/models shows each ML model's signature: what its input must look like.
models = {m["id"]: m for m in api.get("/v1/models").raise_for_status().json()["data"]}
if MODEL not in models:
    sys.exit(f"this server has no model '{MODEL}'")
for tensor in models[MODEL]["signature"]["inputs"]:
    print(f"{MODEL} takes {tensor['name']}: {tensor['dtype']} {tensor['shape']} (None: any number of rows)")

# Send the file as it is: a text/csv body. (A multipart form with a `file` field works too, as below.)
csv_bytes = path.read_bytes()
response = api.post(f"/v1/predict/{MODEL}", content=csv_bytes, headers={"Content-Type": "text/csv"})
if response.status_code != 200:
    sys.exit(f"POST /v1/predict/{MODEL} answered {response.status_code}: {response.text}")
answer = response.json()
outputs = answer["outputs"]


def numbers(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


# To print the rows beside their labels, read the file as the server does: a non-numeric first row is a header.
rows = [row for row in csv.reader(path.read_text().splitlines()) if any(cell.strip() for cell in row)]
header = None if numbers(rows[0]) else rows[0]
data_rows = rows[1:] if header else rows
print(
    f"{len(data_rows)} rows of {path.name} in one call: task {answer['task_id']} on {answer['provider']}, "
    f"batch of {answer['batch_size']}, {answer['latency_ms']} ms, cost ${answer['cost_usd']:.6f}"
)
for row, label, probabilities in zip(data_rows, outputs["label"], outputs["probabilities"], strict=True):
    names = header or [f"col{i}" for i in range(len(row))]
    shown = ", ".join(f"{name}={value}" for name, value in zip(names[:3], row[:3], strict=True))
    print(f"  {shown}, ...  -> {CLASSES[label]:<6} (p={probabilities[label]:.2f})")

# The same file as a multipart upload (what an HTML form or `curl -F file=@rows.csv` sends).
response = api.post(f"/v1/predict/{MODEL}", files={"file": (path.name, csv_bytes, "text/csv")})
if response.status_code != 200:
    sys.exit(f"the multipart upload answered {response.status_code}: {response.text}")
print(f"multipart upload of the same file: same labels: {response.json()['outputs']['label'] == outputs['label']}")
