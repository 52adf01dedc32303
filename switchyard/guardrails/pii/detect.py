"""Finding personal data and secrets in text: one pass of cheap regular expressions for candidates, then the
validators (checksums, `phonenumbers`, `python-stdnum`, `ipaddress`) on the candidates only.

Speed comes from the shape of the work: the regular expressions run in C over the whole text and most text
offers them nothing (a string with no digit, no `@`, no capital followed by digits, no key prefix costs a few
scans); Python code runs per candidate, never per character. Rare shapes that need their own pattern (an `@`
for emails and URL credentials, `::`-style IPv6, PEM blocks) are only looked for when a substring test says
they can be there.

Covered: EMAIL; PHONE (international `+` formats of every country, national formats of the US/NANP and the
UK); CREDIT_CARD (13-19 digits of a known issuer range, Luhn); IBAN (every country, ISO 7064 check);
NATIONAL_ID (see `_NATIONAL`: the UK's National Insurance number, Spain's DNI and NIE, Italy's codice
fiscale, France's NIR, Brazil's CPF, Canada's SIN, India's Aadhaar, Sweden's personnummer, Finland's HETU,
each with its check digits when it has some); US_SSN (`123-45-6789` or spaced, with the SSA's rules);
IP_ADDRESS (IPv4, IPv6); SECRET (API keys of OpenAI, Anthropic, AWS, GitHub, Slack, Google, Stripe, JWTs,
`Bearer` tokens, PEM private keys); URL_CREDENTIALS (`scheme://user:password@host`). Not covered: names and
postal addresses (they need a language model), national IDs of other countries, phone numbers written in
another country's national format.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.es import dni, nie
from stdnum.fi import hetu
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.se import personnummer

EMAIL = "EMAIL"
PHONE = "PHONE"
CREDIT_CARD = "CREDIT_CARD"
IBAN = "IBAN"
NATIONAL_ID = "NATIONAL_ID"
US_SSN = "US_SSN"
IP_ADDRESS = "IP_ADDRESS"
SECRET = "SECRET"
URL_CREDENTIALS = "URL_CREDENTIALS"

# National formats are read as these regions' (a number written with `+` is read as its own country's).
PHONE_REGIONS = ("US", "GB")


@dataclass(frozen=True, slots=True)
class Span:
    """One finding: `text[start:end]` is a value of type `entity`."""

    start: int
    end: int
    entity: str


# --- the candidate pass ---------------------------------------------------------------------------------------

# Alternatives by their first character, so that the engine skips most positions in its fast loop. A candidate
# must not continue a word (the look-behinds), so an order id `ORD-2024-000123` or `v1.2.3.4` offers nothing.
_MAIN = re.compile(
    r"""
    (?P<secret>
        (?<![\w-])(?:
            sk-ant-[A-Za-z0-9_-]{20,}
          | sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}
          | [sr]k_(?:live|test)_[A-Za-z0-9]{16,}
          | (?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}
          | gh[pousr]_[A-Za-z0-9]{36,}
          | github_pat_[A-Za-z0-9_]{22,}
          | xox[abposr]-[A-Za-z0-9-]{10,}
          | AIza[0-9A-Za-z_-]{35}
          | eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}
        )(?![\w-])
    )
  | (?<![\w-])Bearer[ \t]+(?P<bearer>[A-Za-z0-9._~+/-]{16,}=*)
  | (?P<upper>
        (?<![\w-])(?:
            [A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?
          | [A-Z]{2}[ ]?\d{2}[ ]?\d{2}[ ]?\d{2}[ ]?[A-D]
          | [A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]
          | [XYZ]-?\d{7}-?[A-Z]
        )(?![\w-])
    )
  | (?P<alnum>(?<![\w.,-])(?:\d{8}-?[A-Z]|\d{6}[-+A]\d{3}[0-9A-Y])(?![\w-]))
  | (?P<num>
        (?<![\w.,/-])
        (?:\+\d|\(\d|\d)[\d .()-]{5,26}\d
        (?![\w-]|\.\d)
    )
    """,
    re.VERBOSE,
)

_AT = re.compile(
    r"""
    (?P<url>(?<![\w.+-])[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s:/@]+:[^\s/@]+@[^\s/?#"'<>]+)
  | (?P<email>(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-]))
    """,
    re.VERBOSE,
)
_PEM = re.compile(r"-----BEGIN[A-Z ]* PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]*?(?:-----END[A-Z ]* PRIVATE KEY-----|\Z)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|::)[0-9A-Fa-f:.]*[0-9A-Fa-f](?![\w:])")

# --- the validators ---------------------------------------------------------------------------------------------

_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_SSN = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")
_CARD_SHAPE = re.compile(r"\d{4}([ -]?)\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -]?)\d{6}\2\d{4,5}")
_NON_DIGIT = re.compile(r"\D")
_NINO = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]")
_NINO_BAD_PREFIX = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_IBAN = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9 ]+")
_CF = re.compile(r"[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]")
_NIE = re.compile(r"[XYZ]-?\d{7}-?[A-Z]")
_DNI = re.compile(r"\d{8}-?[A-Z]")
_HETU = re.compile(r"\d{6}[-+A]\d{3}[0-9A-Y]")
_SPACES = re.compile(r" +")

# National identifiers written with digits only: (shape, validator). A checksum alone on a plain run of digits
# would flag order numbers, so each needs the shape its country writes it in.
_NATIONAL: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
    (re.compile(r"\d{3}\.\d{3}\.\d{3}-\d{2}"), cpf.is_valid),
    (re.compile(r"\d{3}([ -])\d{3}\1\d{3}"), sin.is_valid),
    (re.compile(r"[2-9]\d{3}([ -])\d{4}\1\d{4}"), aadhaar.is_valid),
    (re.compile(r"(?:\d{2})?\d{6}[-+]\d{4}"), personnummer.is_valid),
    (re.compile(r"[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}"), nir.is_valid),
)

# Card numbers start with a known issuer range: Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay, Maestro.
_CARD_PREFIX = re.compile(r"4|5[0-8]|2[2-7]|3[0-9]|6")


def _card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None and luhn.is_valid(digits)


def _ssn(candidate: str) -> bool:
    m = _SSN.fullmatch(candidate)
    if m is None:
        return False
    area, group, serial = m.group(1), m.group(3), m.group(4)
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _phone(candidate: str, digits: int) -> bool:
    if not 7 <= digits <= 15:
        return False
    regions: Iterable[str | None] = (None,) if candidate.startswith("+") else PHONE_REGIONS
    for region in regions:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _numeric(candidate: str) -> str | None:
    """The type of a run of digits and separators, or None."""
    if _IPV4.fullmatch(candidate):
        try:
            ipaddress.IPv4Address(candidate)
        except ValueError:
            return None
        return IP_ADDRESS
    if _ssn(candidate):
        return US_SSN
    digits = _NON_DIGIT.sub("", candidate)
    if candidate[0].isdigit() and _CARD_SHAPE.fullmatch(candidate) and _card(digits):
        return CREDIT_CARD
    for shape, valid in _NATIONAL:
        if shape.fullmatch(candidate) and valid(candidate):
            return NATIONAL_ID
    if _phone(candidate, len(digits)):
        return PHONE
    return None


def _numeric_spans(text: str, start: int, end: int, wanted: frozenset[str], out: list[Span]) -> None:
    """Type the candidate `text[start:end]`; when it is nothing whole, try the space-separated runs it holds
    (`call 415 555 0100 2 times` is a phone number followed by a count)."""
    candidate = text[start:end]
    kind = _numeric(candidate)
    if kind is not None:
        if kind in wanted:
            out.append(Span(start, end, kind))
        return
    if " " not in candidate:
        return
    pieces = [(m.start(), m.end()) for m in re.finditer(r"[^ ]+", candidate)]
    # Longest first: drop pieces from the right, then from the left.
    for i in range(len(pieces) - 1, 0, -1):
        a, b = pieces[0][0], pieces[i - 1][1]
        sub = candidate[a:b].rstrip(".()-")
        if len(sub) >= 7 and (kind := _numeric(sub)) is not None:
            if kind in wanted:
                out.append(Span(start + a, start + a + len(sub), kind))
            rest = pieces[i][0]
            if end - (start + rest) >= 7:
                _numeric_spans(text, start + rest, end, wanted, out)
            return
    rest = pieces[1][0]
    if end - (start + rest) >= 7:
        _numeric_spans(text, start + rest, end, wanted, out)


def _upper(candidate: str) -> str | None:
    if _CF.fullmatch(candidate):
        return NATIONAL_ID if codicefiscale.is_valid(candidate) else None
    if _NIE.fullmatch(candidate):
        return NATIONAL_ID if nie.is_valid(candidate) else None
    if _NINO.fullmatch(candidate) and candidate[:2] not in _NINO_BAD_PREFIX:
        return NATIONAL_ID
    if _IBAN.fullmatch(candidate) and std_iban.is_valid(candidate):
        return IBAN
    return None


def _alnum(candidate: str) -> str | None:
    if _DNI.fullmatch(candidate):
        return NATIONAL_ID if dni.is_valid(candidate) else None
    if _HETU.fullmatch(candidate):
        return NATIONAL_ID if hetu.is_valid(candidate) else None
    return None


def detect(text: str, wanted: frozenset[str]) -> list[Span]:
    """The findings in `text` of the entity types in `wanted`, in order, not overlapping."""
    spans: list[Span] = []
    for m in _MAIN.finditer(text):
        group = m.lastgroup
        if group == "num":
            _numeric_spans(text, m.start(), m.end(), wanted, spans)
        elif group == "secret" or group == "bearer":
            if SECRET in wanted:
                spans.append(Span(m.start(group), m.end(group), SECRET))
        elif group == "upper":
            kind = _upper(m.group())
            if kind is not None and kind in wanted:
                spans.append(Span(m.start(), m.end(), kind))
        elif group == "alnum":
            kind = _alnum(m.group())
            if kind is not None:
                if kind in wanted:
                    spans.append(Span(m.start(), m.end(), kind))
            elif m.group()[-1].isdigit():  # a HETU's shape that is not one: `880320-0016` is a personnummer
                _numeric_spans(text, m.start(), m.end(), wanted, spans)
    extra: list[Span] = []
    if "@" in text and (EMAIL in wanted or URL_CREDENTIALS in wanted):
        for m in _AT.finditer(text):
            kind = EMAIL if m.lastgroup == "email" else URL_CREDENTIALS
            if kind in wanted:
                extra.append(Span(m.start(), m.end(), kind))
    if "::" in text or text.count(":") >= 7:
        if IP_ADDRESS in wanted:
            for m in _IPV6.finditer(text):
                if _ipv6(m.group()):
                    extra.append(Span(m.start(), m.end(), IP_ADDRESS))
    if "-----BEGIN" in text and SECRET in wanted:
        extra.extend(Span(m.start(), m.end(), SECRET) for m in _PEM.finditer(text))
    if extra:
        spans = _merge(spans, extra)
    return spans


def _ipv6(candidate: str) -> bool:
    if candidate.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _merge(a: list[Span], b: list[Span]) -> list[Span]:
    """Both lists as one, ordered; of overlapping findings the longer one stays (an email inside a URL's
    credentials, digits inside a PEM block)."""
    ordered = sorted(a + b, key=lambda s: (s.start, -(s.end - s.start)))
    merged: list[Span] = []
    for span in ordered:
        if merged and span.start < merged[-1].end:
            if span.end - span.start > merged[-1].end - merged[-1].start:
                merged[-1] = span
            continue
        merged.append(span)
    return merged
