"""The PII guardrail's engine in process: detection of every entity type, look-alikes left alone, the modes, the
restorer (mangled placeholders, placeholders cut over chunks), the streaming scrubber, and the spec's checks."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from switchyard.core.guardrail_spec import PII_ENTITIES, Guardrails, PiiGuardrail
from switchyard.guardrails.pii import Restorer, Scrubber, StreamScrubber, detect, map_input

ALL = frozenset(PII_ENTITIES)

# One value of each type, as it may be written (several for the types with several shapes).
SAMPLES: dict[str, list[str]] = {
    "EMAIL": ["jane.doe+billing@example.co.uk", "ops@sub.example.org"],
    "PHONE": ["+44 20 7946 0958", "(415) 555-2671", "415-555-2671", "+1 415 555 2671", "+49 30 901820"],
    "CREDIT_CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "6011111111111117"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"],
    "NATIONAL_ID": [
        "AB 12 34 56 C",  # UK National Insurance number
        "12345678Z",  # Spain DNI
        "X1234567L",  # Spain NIE
        "RSSMRA85T10A562S",  # Italy codice fiscale
        "2 95 10 99 126 111 93",  # France NIR
        "390.533.447-05",  # Brazil CPF
        "2341 2341 2346",  # India Aadhaar
        "880320-0016",  # Sweden personnummer
        "131052-308T",  # Finland HETU
    ],
    "US_SSN": ["123-45-6789", "078 05 1120"],
    "IP_ADDRESS": ["192.168.1.10", "2001:db8::8a2e:370:7334", "::1"],
    "SECRET": [
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
        "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM3lK2j",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghijABCDEFGHIJklmnop",
        "xoxb-2048-4096-abcdefABCDEF",
        "AIzaSyD-1234567890abcdefghijklmnopqrstu",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----",
    ],
    "URL_CREDENTIALS": ["postgres://admin:hunter2@db.internal:5432", "https://bob:s3cr3t@git.example.com"],
}

# Look-alikes support text is full of, which must stay as they are.
CLEAN = [
    "Part PN-4411-2290-X is back in stock; also part 4411-2290.",
    "Your order ORD-2024-000123 (order #100234) shipped on 2024-03-15 and arrives 15/03/2024.",
    "It costs $1,299.99 or EUR 1.299,00, tax 19.5%, total 1500000 units, 42 boxes.",
    "Upgrade from v2.14.1 to version 3.0.2 (build 20240315.1) of the app.",
    "Ticket 8812345, invoice INV-99812, ref 2024/03/15-77, SKU AB-1234-CD.",
    "The meeting is at 10:30:00 on 12.03.2024; room 4.12; ratio 3:2.",
    "Call me in 5 minutes; we have 3 - 4 options and 12 - 15 people.",
    "Call sk-learn and the AKIA docs; a bearer of bad news; see section 4.1.2.",
]


@pytest.mark.parametrize(("entity", "value"), [(e, v) for e, vs in SAMPLES.items() for v in vs])
def test_each_sample_is_found_whole_inside_text(entity: str, value: str) -> None:
    text = f"Hello, please use {value} for this, thanks."
    spans = detect(text, ALL)
    assert [(text[s.start : s.end], s.entity) for s in spans] == [(value, entity)]


@pytest.mark.parametrize("text", CLEAN)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert detect(text, ALL) == []
    assert Scrubber("mask").scrub(text) == text


def test_checksums_decide() -> None:
    for wrong in ["4111 1111 1111 1112", "DE89 3704 0044 0532 0130 01", "12345678A", "RSSMRA85T10A562X"]:
        assert detect(f"see {wrong} now", ALL) == [], wrong
    for not_ssn in ["000-12-3456", "666-12-3456", "123-00-4567", "923-45-6789"]:
        assert all(s.entity != "US_SSN" for s in detect(f"ssn {not_ssn}.", ALL))
    assert detect("host 999.168.1.10 up", ALL) == []


def test_entities_choose_what_is_scrubbed() -> None:
    text = "mail a@example.com, card 4111 1111 1111 1111"
    only_cards = Scrubber("mask", frozenset({"CREDIT_CARD"}))
    assert only_cards.scrub(text) == "mail a@example.com, card <CREDIT_CARD_1>"


def test_mask_numbers_by_type_and_repeats_the_same_value() -> None:
    s = Scrubber("mask")
    text = "a@example.com, b@example.com, a@example.com, 415-555-2671"
    assert s.scrub(text) == "<EMAIL_1>, <EMAIL_2>, <EMAIL_1>, <PHONE_1>"
    # Across the texts of one call (another message): the same numbering.
    assert s.scrub("again b@example.com") == "again <EMAIL_2>"
    assert s.counts() == {"EMAIL": 4, "PHONE": 1}


def test_hash_is_keyed_and_stable_across_calls() -> None:
    one, two = Scrubber("hash", hash_key=b"k" * 32), Scrubber("hash", hash_key=b"k" * 32)
    other_key = Scrubber("hash", hash_key=b"x" * 32)
    a, b = one.scrub("to a@example.com"), two.scrub("from a@example.com")
    assert re.fullmatch(r"to <EMAIL_[0-9a-f]{8}>", a)
    assert a[3:] == b[5:]
    assert other_key.scrub("to a@example.com") != a


def test_remove_drops_the_value() -> None:
    assert Scrubber("remove").scrub("mail a@example.com now") == "mail  now"


def test_reversible_restores_as_given_and_mangled() -> None:
    s = Scrubber("reversible")
    assert s.scrub("a@example.com and 4111 1111 1111 1111") == "<EMAIL_1> and <CREDIT_CARD_1>"
    r = Restorer(s.vault)
    for answer in [
        "<EMAIL_1> / <CREDIT_CARD_1>",
        "< email_1 > / <Credit Card 1>",
        "<Email 1> / [CREDIT-CARD-1]",
        "{EMAIL_1} / &lt;CREDIT_CARD_1&gt;",
        "EMAIL_1 / <creditcard_1>",
    ]:
        assert r.restore(answer) == "a@example.com / 4111 1111 1111 1111", answer
    # Placeholders the call did not make stay as they are.
    assert r.restore("<EMAIL_2> <PHONE_1> <NAME_1>") == "<EMAIL_2> <PHONE_1> <NAME_1>"


@pytest.mark.parametrize("answer", ["Hi <EMAIL_1>, card < credit card 1 > ok EMAIL_1.", "<EMAIL_1><EMAIL_1>"])
def test_stream_restorer_handles_every_cut(answer: str) -> None:
    s = Scrubber("reversible")
    s.scrub("a@example.com 4111 1111 1111 1111")
    r = Restorer(s.vault)
    whole = r.restore(answer)
    for cut in range(1, len(answer)):
        for step in (1, 3):
            pieces = [answer[:cut]] + [answer[i : i + step] for i in range(cut, len(answer), step)]
            stream = r.stream()
            out = "".join(stream.feed(p) for p in pieces) + stream.flush()
            assert out == whole, (cut, step)


def test_stream_scrubber_sees_values_cut_over_pieces() -> None:
    text = ("Contact jane.doe@example.com or +44 20 7946 0958 about card 4111 1111 1111 1111. " * 6).strip()
    whole = Scrubber("mask").scrub(text)
    for size in (1, 2, 5, 17):
        s = StreamScrubber(Scrubber("mask"))
        out = "".join(s.feed(text[i : i + size]) for i in range(0, len(text), size)) + s.flush()
        assert out == whole, size


def test_chat_texts_of_every_role_and_part_are_scrubbed() -> None:
    task_input = {
        "messages": [
            {"role": "system", "content": "admin is root@example.com"},
            {"role": "user", "content": [{"type": "text", "text": "I am a@example.com"}, {"type": "image_url"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": '{"to": "a@example.com"}'}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": "sent to a@example.com"},
        ],
        "temperature": 0,
    }
    out = map_input("chat", task_input, Scrubber("mask").scrub)
    assert "example.com" not in str(out)
    assert out["messages"][1]["content"][1] == {"type": "image_url"}
    assert out["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"to": "<EMAIL_2>"}'
    assert task_input["messages"][0]["content"] == "admin is root@example.com"  # the input is not changed
    assert map_input("embed", {"input": ["a@example.com", "x"]}, Scrubber("mask").scrub) == {
        "input": ["<EMAIL_1>", "x"]
    }


def test_the_spec_refuses_unknown_entities_and_response_reversible() -> None:
    with pytest.raises(ValidationError) as exc:
        Guardrails.model_validate({"pii": {"entities": ["EMAIL", "NAME"]}})
    message = str(exc.value)
    assert "pii.entities" in message
    assert "NAME" in message
    assert "CREDIT_CARD" in message
    with pytest.raises(ValidationError, match="reversible"):
        PiiGuardrail.model_validate({"mode": "reversible", "on": ["request", "response"]})
    assert PiiGuardrail.model_validate({"mode": "reversible"}).on == ["request"]
