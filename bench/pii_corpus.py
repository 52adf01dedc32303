"""The `pii` benchmark's corpus: support-style texts with labelled personal data and secrets, and clean texts full
of look-alikes (order ids, part numbers, dates, prices, versions, times, plain numbers), from a fixed seed.

Every labelled value is valid for its type (checksums computed with `python-stdnum`, phone numbers checked with
`phonenumbers`), so a miss is the detector's, not the corpus's.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn, verhoeff
from stdnum.br import cpf
from stdnum.es import dni
from stdnum.fi import hetu
from stdnum.fr import nir
from stdnum.it import codicefiscale


@dataclass(frozen=True)
class Doc:
    text: str
    labels: list[tuple[int, int, str]]  # (start, end, type)


_FIRST = ["jane", "john", "maria", "li", "ahmed", "olga", "pierre", "sofia", "raj", "emma", "lucas", "noah"]
_LAST = ["doe", "smith", "garcia", "wang", "khan", "petrova", "martin", "rossi", "patel", "jones", "silva"]
_DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.de", "shop.example.net"]
_US_AREAS = [201, 212, 213, 305, 312, 404, 415, 503, 617, 646, 702, 718, 805, 917, 972]


def _email(r: random.Random) -> str:
    sep = r.choice([".", "_", "", "+support."])
    return (
        f"{r.choice(_FIRST)}{sep}{r.choice(_LAST)}{r.randint(1, 99) if r.random() < 0.4 else ''}@{r.choice(_DOMAINS)}"
    )


def _phone(r: random.Random) -> str:
    while True:
        kind = r.randrange(5)
        if kind <= 2:
            area, nxx, line = r.choice(_US_AREAS), r.randint(200, 999), r.randint(0, 9999)
            text = [f"({area}) {nxx}-{line:04d}", f"{area}-{nxx}-{line:04d}", f"+1 {area} {nxx} {line:04d}"][kind]
        elif kind == 3:
            text = f"+44 20 7946 {r.randint(0, 999):04d}"
        else:
            text = r.choice([f"+49 30 {r.randint(1000000, 9999999)}", f"+33 1 {r.randint(10, 99)} {r.randint(10, 99)} "
                             f"{r.randint(10, 99)} {r.randint(10, 99)}"])  # fmt: skip
        number = phonenumbers.parse(text, None if text.startswith("+") else "US")
        if phonenumbers.is_valid_number(number):
            return text


def _card(r: random.Random) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)])
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    digits = body + luhn.calc_check_digit(body)
    if length == 15:
        return r.choice([f"{digits[:4]} {digits[4:10]} {digits[10:]}", digits])
    sep = r.choice([" ", "-", ""])
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


def _iban(r: random.Random) -> str:
    while True:
        country, bban = r.choice(
            [
                ("DE", "".join(r.choice(string.digits) for _ in range(18))),
                ("GB", "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
                 + "".join(r.choice(string.digits) for _ in range(14))),
                ("NL", "ABNA" + "".join(r.choice(string.digits) for _ in range(10))),
                ("ES", "".join(r.choice(string.digits) for _ in range(20))),
            ]
        )  # fmt: skip
        compact = country + iban.calc_check_digits(country + "00" + bban) + bban
        if iban.is_valid(compact):
            return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4)) if r.random() < 0.6 else compact


def _national(r: random.Random) -> str:
    while True:
        kind = r.randrange(5)
        if kind == 0:
            n = f"{r.randint(10000000, 99999999)}"
            value = n + dni.calc_check_digit(n)
        elif kind == 1:
            base = f"{r.randint(100000000, 999999999)}"
            d = cpf._calc_check_digits(base)  # noqa: SLF001 - stdnum has no public one for CPF
            value = f"{base[:3]}.{base[3:6]}.{base[6:]}-{d}"
        elif kind == 2:
            body = f"{r.choice('12')}{r.randint(50, 99)}{r.randint(1, 12):02d}{r.randint(10, 95)}"
            body += f"{r.randint(100, 999)}{r.randint(100, 999)}"
            key = nir.calc_check_digits(body)
            value = f"{body[0]} {body[1:3]} {body[3:5]} {body[5:7]} {body[7:10]} {body[10:13]} {key}"
        elif kind == 3:
            body = f"{r.randint(1, 28):02d}{r.randint(1, 12):02d}{r.randint(50, 99)}-{r.randint(2, 899):03d}"
            value = body + "0123456789ABCDEFHJKLMNPRSTUVWXY"[int(body[:6] + body[7:]) % 31]  # HETU's check
        else:
            letters = "".join(r.choice("BCDFGLMNPRSTVZ") for _ in range(6))
            month, town = r.choice("ABCDEHLMPRST"), f"{r.choice('ABDFHL')}{r.randint(100, 999)}"
            body = f"{letters}{r.randint(50, 99)}{month}{r.randint(1, 28):02d}{town}"
            value = body + codicefiscale.calc_check_digit(body)
        try:
            ok = [dni.is_valid, cpf.is_valid, nir.is_valid, hetu.is_valid, codicefiscale.is_valid][kind](value)
        except Exception:
            ok = False
        if ok:
            return value


def _aadhaar(r: random.Random) -> str:
    body = f"{r.randint(2, 9)}{r.randint(0, 10**10 - 1):010d}"
    n = body + verhoeff.calc_check_digit(body)
    return f"{n[:4]} {n[4:8]} {n[8:]}"


def _ssn(r: random.Random) -> str:
    area = r.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"


def _ip(r: random.Random) -> str:
    if r.random() < 0.7:
        return ".".join(str(r.randint(1, 254)) for _ in range(4))
    groups = [f"{r.randint(0, 0xFFFF):x}" for _ in range(8)]
    return "2001:db8:" + ":".join(groups[:2]) + "::" + groups[7] if r.random() < 0.5 else ":".join(groups)


def _token(r: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def _secret(r: random.Random) -> str:
    return r.choice(
        [
            lambda: "sk-proj-" + _token(r, 40),
            lambda: "sk-ant-api03-" + _token(r, 60, string.ascii_letters + string.digits + "_-"),
            lambda: "AKIA" + _token(r, 16, string.ascii_uppercase + string.digits),
            lambda: "ghp_" + _token(r, 36),
            lambda: "xoxb-" + _token(r, 12, string.digits) + "-" + _token(r, 24),
            lambda: "AIza" + _token(r, 35, string.ascii_letters + string.digits + "_-"),
            lambda: "sk_live_" + _token(r, 24),
            lambda: "eyJhbGciOiJIUzI1NiJ9.eyJ" + _token(r, 30) + "." + _token(r, 43, string.ascii_letters + "_-"),
        ]
    )()


def _url_creds(r: random.Random) -> str:
    return (
        f"{r.choice(['postgres', 'https', 'redis', 'amqp'])}://{r.choice(_FIRST)}:{_token(r, 12)}@{r.choice(_DOMAINS)}"
    )


GENERATORS = {
    "EMAIL": _email,
    "PHONE": _phone,
    "CREDIT_CARD": _card,
    "IBAN": _iban,
    "NATIONAL_ID": lambda r: _aadhaar(r) if r.random() < 0.2 else _national(r),
    "US_SSN": _ssn,
    "IP_ADDRESS": _ip,
    "SECRET": _secret,
    "URL_CREDENTIALS": _url_creds,
}

_LEADS = {
    "EMAIL": ["You can reach me at {}", "please reply to {}", "my login email is {}"],
    "PHONE": ["call me back on {}", "my number is {}", "the store phone {} never answers"],
    "CREDIT_CARD": ["I paid with card {}", "the charge on {} is wrong", "card number {} exp 09/27"],
    "IBAN": ["refund to IBAN {}", "our account {} should receive it", "wire it to {}"],
    "NATIONAL_ID": ["my ID number is {}", "the form asked for {}", "tax id {} was rejected"],
    "US_SSN": ["SSN {} on file", "my social is {}", "they asked for {} again"],
    "IP_ADDRESS": ["login from {} was blocked", "the server at {} times out", "whitelist {} please"],
    "SECRET": ["I pasted the key {} by mistake", "token {} leaked in the logs", "using {} in the config"],
    "URL_CREDENTIALS": ["connection string {} fails", "we point the app at {}", "the DSN is {}"],
}

_FILLER = [
    "Hello team, the dashboard has been slow since the last update and exports time out.",
    "I have tried clearing the cache and logging in again, but nothing changed.",
    "Could you look into this before Friday? Our customers are waiting on the report.",
    "Thanks for the quick answer yesterday; the first issue is solved now.",
    "The invoice PDF shows the wrong company name and the VAT line is missing.",
    "We upgraded from v2.14.1 to version 3.0.2 (build 20240315.1) and the sync broke.",
    "Order ORD-2024-000123 (order #100234) shipped on 2024-03-15 and should arrive 18/03/2024.",
    "It costs $1,299.99 or EUR 1.299,00 with tax 19.5%, for 1500000 units in 42 boxes.",
    "Part PN-4411-2290-X is back in stock; ticket 8812345 and invoice INV-99812 are linked.",
    "The meeting moved to 10:30:00 on 12.03.2024 in room 4.12; the ratio is 3:2.",
    "SKU AB-1234-CD and ref 2024/03/15-77 were both rejected by the importer.",
    "We have 3 - 4 options and 12 - 15 people; see section 4.1.2 of the guide.",
    "Error code 0x80070005 appears after step 7 of 12, around 45% of the way.",
    "Tracking id TRK-55012-99 says the parcel left the depot at 06:45.",
]


def corpus(seed: int, size_bytes: int, entity_share: float = 0.5) -> list[Doc]:
    """Documents of 2-6 sentences, about `size_bytes` in all; about `entity_share` of them hold 1-3 values."""
    r = random.Random(seed)
    docs: list[Doc] = []
    total = 0
    types = list(GENERATORS)
    while total < size_bytes:
        parts: list[str] = []
        labels: list[tuple[int, int, str]] = []
        at = 0
        with_values = r.random() < entity_share
        n_values = r.randint(1, 3) if with_values else 0
        sentences = [r.choice(_FILLER) for _ in range(r.randint(2, 6))]
        slots = sorted(r.sample(range(len(sentences) + n_values), n_values)) if n_values else []
        filler = iter(sentences)
        for i in range(len(sentences) + n_values):
            if i in slots:
                kind = r.choice(types)
                value = GENERATORS[kind](r)
                lead = r.choice(_LEADS[kind])
                before, after = lead.split("{}")
                sentence = f"{before}{value}{after}."
                start = at + len(before)
                labels.append((start, start + len(value), kind))
            else:
                sentence = next(filler)
            parts.append(sentence)
            at += len(sentence) + 1
        text = " ".join(parts)
        docs.append(Doc(text, labels))
        total += len(text.encode())
    return docs
