"""pii: the PII guardrail's detector alone, in process, against Presidio's analyzer on the same corpus in the same
run (target >= 100x its MB/s; recall >= 0.98 and precision >= 0.97 for ours).

- Corpus (`bench/pii_corpus.py`): support-style documents from a fixed seed, half with 1-3 labelled values of
  the nine types, all full of look-alikes (order ids, part numbers, dates, prices, versions, times, plain
  numbers). Several MB.
- Ours: `switchyard.guardrails.pii.detect` over every document, all entity types.
- Presidio: `AnalyzerEngine` with its predefined English pattern recognizers and no NER: an NLP engine that
  returns empty artifacts (no spaCy model, no tokenizing: the cheapest setup it runs with), the SpacyRecognizer
  removed, and only the entities both cover asked for (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE,
  US_SSN, IP_ADDRESS: Presidio's English recognizers have no secrets, URL credentials or the national IDs we
  cover), at its default score threshold. It runs on a prefix of the corpus (`presidio_bytes`; it is slow),
  and both sides' MB/s are measured there (ours on the whole corpus too).
- Accuracy: a finding counts when it overlaps a label of the same type; recall over labels, precision over
  findings. Ours on every type, and both on the types Presidio covers.
- Hot path: microseconds per call of the request guardrail (`scrub_request`, mask) on a typical chat message,
  with and without a value in it, and for a message with no guardrail configured.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bench.pii_corpus import Doc, corpus
from bench.registry import Benchmark, Options, Result, Row, standard_row
from switchyard.core.config import AppConfig
from switchyard.core.guardrail_spec import PII_ENTITIES, Guardrails
from switchyard.guardrails.pii import detect, scrub_request

SEED = 20261207
COMMON = {
    "EMAIL": "EMAIL_ADDRESS",
    "PHONE": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN": "IBAN_CODE",
    "US_SSN": "US_SSN",
    "IP_ADDRESS": "IP_ADDRESS",
}


@dataclass(frozen=True)
class Sizes:
    corpus_bytes: int
    presidio_bytes: int
    rounds: int
    hot_calls: int


FULL = Sizes(corpus_bytes=5_000_000, presidio_bytes=400_000, rounds=3, hot_calls=20_000)
QUICK = Sizes(corpus_bytes=1_000_000, presidio_bytes=100_000, rounds=1, hot_calls=5_000)


def _presidio() -> Any:
    """Presidio's analyzer with pattern recognizers only."""
    # tldextract (Presidio's email check) would fetch the public suffix list (no network here: a failed fetch per
    # process); an empty URL list makes it use its bundled copy from the start.
    os.environ.setdefault("TLDEXTRACT_CACHE", "/tmp/switchyard-bench-tldextract")
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine

    class NoNlp(NlpEngine):  # type: ignore[misc]
        """No model, no tokens: the pattern recognizers need none."""

        def __init__(self) -> None:
            import spacy

            self._doc = spacy.blank("en").make_doc("")

        def load(self) -> None:
            pass

        def is_loaded(self) -> bool:
            return True

        def process_text(self, text: str, language: str) -> Any:
            return NlpArtifacts(
                entities=[], tokens=self._doc, tokens_indices=[], lemmas=[], nlp_engine=self, language=language
            )

        def process_batch(self, texts: Any, language: str, batch_size: int = 1, n_process: int = 1, **_: Any) -> Any:
            for text in texts:
                yield text, self.process_text(text, language)

        def is_stopword(self, word: str, language: str) -> bool:
            return False

        def is_punct(self, word: str, language: str) -> bool:
            return False

        def get_supported_entities(self) -> list[str]:
            return []

        def get_supported_languages(self) -> list[str]:
            return ["en"]

    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"])
    registry.recognizers = [r for r in registry.recognizers if type(r).__name__ != "SpacyRecognizer"]
    return AnalyzerEngine(nlp_engine=NoNlp(), registry=registry, supported_languages=["en"])


def _score(docs: list[Doc], found: list[list[tuple[int, int, str]]], types: set[str]) -> dict[str, Any]:
    labels = found_total = label_hits = finding_hits = 0
    per_type: dict[str, list[int]] = {t: [0, 0] for t in types}
    for doc, spans in zip(docs, found, strict=True):
        wanted = [lab for lab in doc.labels if lab[2] in types]
        mine = [s for s in spans if s[2] in types]
        labels += len(wanted)
        found_total += len(mine)
        for lab in wanted:
            hit = any(s[2] == lab[2] and s[0] < lab[1] and lab[0] < s[1] for s in mine)
            label_hits += hit
            per_type[lab[2]][0] += hit
            per_type[lab[2]][1] += 1
        finding_hits += sum(any(s[2] == lab[2] and s[0] < lab[1] and lab[0] < s[1] for lab in wanted) for s in mine)
    return {
        "recall": label_hits / max(1, labels),
        "precision": finding_hits / max(1, found_total),
        "labels": labels,
        "findings": found_total,
        "recall_by_type": {t: round(h / max(1, n), 4) for t, (h, n) in sorted(per_type.items())},
    }


def _mb_per_s(docs: list[Doc], seconds: float) -> float:
    return sum(len(d.text.encode()) for d in docs) / seconds / 1e6


def _prefix(docs: list[Doc], size: int) -> list[Doc]:
    out, total = [], 0
    for d in docs:
        if total >= size:
            break
        out.append(d)
        total += len(d.text.encode())
    return out


def _us_per_call(fn: Any, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return 1e6 * (time.perf_counter() - t0) / n


def _hot_path(calls: int) -> dict[str, float]:
    """µs per call of the request guardrail on a typical chat message (what the API adds per request)."""
    config = AppConfig.model_validate(
        {
            "providers": {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "x"}},
            "models": {"m": {"type": "chat", "deployments": [{"provider": "fake", "model": "x"}]}},
        }
    )
    on = Guardrails.model_validate({"pii": {"mode": "mask"}})
    system = {"role": "system", "content": "You are a helpful support agent for an online shop. Be brief."}

    def message(text: str) -> dict[str, Any]:
        return {"messages": [system, {"role": "user", "content": text}], "temperature": 0.2}

    plain = message(
        "Hi, my order from last week still has not arrived. The tracking page shows it left the depot on "
        "2024-03-15 but nothing since. Order ORD-2024-000123, 2 items, $54.99. Can you check?"
    )
    with_values = message(
        "Hi, my order from last week still has not arrived. You can reach me at jane.doe@example.com or "
        "(415) 555-2671. Order ORD-2024-000123, 2 items, $54.99, paid with 4111 1111 1111 1111. Can you check?"
    )
    return {
        "no_guardrail_us": _us_per_call(
            lambda: scrub_request(config, "chat", "m", plain, None, restorable=True), calls
        ),
        "mask_no_values_us": _us_per_call(
            lambda: scrub_request(config, "chat", "m", plain, on, restorable=True), calls
        ),
        "mask_three_values_us": _us_per_call(
            lambda: scrub_request(config, "chat", "m", with_values, on, restorable=True), calls
        ),
        "message_chars": float(len(with_values["messages"][1]["content"]) + len(system["content"])),
    }


def run(opts: Options) -> Result:
    """Rounds of: ours on the whole corpus, ours and Presidio on the same prefix; accuracy of both; the hot
    path. The ratio is on the same text (the prefix), the median round of each side (the machine is shared:
    alternating rounds keep either side from always getting the quieter moments)."""
    sz = opts.sizes("pii", FULL, QUICK)
    docs = corpus(SEED, sz.corpus_bytes)
    sample = _prefix(docs, sz.presidio_bytes)
    every = frozenset(PII_ENTITIES)
    analyzer = _presidio()
    presidio_entities = list(COMMON.values())
    back = {v: k for k, v in COMMON.items()}
    detect(docs[0].text, every)  # imports and compiled patterns warm
    analyzer.analyze(sample[0].text, language="en", entities=presidio_entities)  # warm (and tldextract's list)
    whole, ours_prefix, presidio = [], [], []
    ours_found: list[list[tuple[int, int, str]]] = []
    presidio_raw: list[Any] = []
    for _ in range(sz.rounds):
        t0 = time.perf_counter()
        ours_found = [[(s.start, s.end, s.entity) for s in detect(d.text, every)] for d in docs]
        whole.append(_mb_per_s(docs, time.perf_counter() - t0))
        t0 = time.perf_counter()
        for d in sample:
            detect(d.text, every)
        ours_prefix.append(_mb_per_s(sample, time.perf_counter() - t0))
        t0 = time.perf_counter()
        presidio_raw = [analyzer.analyze(d.text, language="en", entities=presidio_entities) for d in sample]
        presidio.append(_mb_per_s(sample, time.perf_counter() - t0))
    presidio_found = [
        [(r.start, r.end, back[r.entity_type]) for r in rs if r.entity_type in back] for rs in presidio_raw
    ]
    ours_mbs, presidio_mbs = statistics.median(ours_prefix), statistics.median(presidio)
    common = set(COMMON)
    return {
        "ours": ours_mbs,
        "baseline": presidio_mbs,
        "unit": "MB/s",
        "ratio": ours_mbs / presidio_mbs,
        "target": 100.0,
        "target_kind": ">=",
        "sizes": asdict(sz),
        "rounds": {"ours_whole_corpus": whole, "ours_prefix": ours_prefix, "presidio_prefix": presidio},
        "corpus": {
            "documents": len(docs),
            "bytes": sum(len(d.text.encode()) for d in docs),
            "labels": sum(len(d.labels) for d in docs),
            "presidio_documents": len(sample),
            "presidio_bytes": sum(len(d.text.encode()) for d in sample),
        },
        "ours_whole_corpus_mbs": statistics.median(whole),
        "accuracy": {
            "ours_all_types": _score(docs, ours_found, set(PII_ENTITIES)),
            "ours_common_types_prefix": _score(sample, ours_found[: len(sample)], common),
            "presidio_common_types_prefix": _score(sample, presidio_found, common),
        },
        "hot_path": _hot_path(sz.hot_calls),
    }


def _rows(res: Result) -> Iterator[Row]:
    acc = res["accuracy"]["ours_all_types"]
    yield standard_row("pii: detector MB/s, same corpus", res, baseline_note=" (Presidio, no NER)", decimals=2)
    ok = acc["recall"] >= 0.98 and acc["precision"] >= 0.97
    yield (
        "pii: ours recall / precision (all types)",
        f"{acc['recall']:.4f} / {acc['precision']:.4f}",
        "",
        "",
        ">=0.98 / >=0.97",
        "met" if ok else "NOT met",
    )


def rows(name: str, res: Result) -> list[Row]:
    """MB/s ours vs Presidio, and our accuracy."""
    return list(_rows(res))


def details(res: Result) -> None:
    """Accuracy of both on the common types, the corpus, the hot path."""
    c, a, h = res["corpus"], res["accuracy"], res["hot_path"]
    print(
        f"pii corpus: {c['documents']} documents, {c['bytes'] / 1e6:.1f} MB, {c['labels']} labelled values; both "
        f"timed on the first {c['presidio_documents']} ({c['presidio_bytes'] / 1e6:.2f} MB); ours on the whole "
        f"corpus: {res['ours_whole_corpus_mbs']:.2f} MB/s; rounds (MB/s): {res['rounds']}"
    )
    for key, label in (
        ("ours_all_types", "ours, all 9 types, whole corpus"),
        ("ours_common_types_prefix", "ours, the 6 types Presidio covers, its prefix"),
        ("presidio_common_types_prefix", "Presidio, the 6 types, its prefix"),
    ):
        x = a[key]
        print(
            f"  {label}: recall {x['recall']:.4f}, precision {x['precision']:.4f} ({x['labels']} labels, "
            f"{x['findings']} findings); recall by type {x['recall_by_type']}"
        )
    print(
        f"  hot path (request guardrail, a {h['message_chars']:.0f}-character chat): no guardrail "
        f"{h['no_guardrail_us']:.1f} us, mask with no value {h['mask_no_values_us']:.1f} us, mask with 3 values "
        f"{h['mask_three_values_us']:.1f} us per call"
    )


BENCHMARK = Benchmark(
    name="pii",
    summary="PII detector MB/s vs Presidio's analyzer without NER, same corpus (>= 100x); recall/precision",
    run=run,
    rows=rows,
    details=details,
)
