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
from collections.abc import Callable
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


@dataclass(frozen=True, slots=True)
class Span:
    """One finding: `text[start:end]` is a value of type `entity`."""

    start: int
    end: int
    entity: str


# --- the candidate pass ---------------------------------------------------------------------------------------

# Each pattern starts with one character class, so the engine skips the positions that cannot start a candidate
# in its fast loop (an alternation of patterns would try each of them at every position). The look-behind just
# after that character refuses a candidate that continues a word: `ORD-2024-000123` or `v1.2.3.4` offer nothing.
_DIGITS = re.compile(
    r"""
    [+(\d](?<![\w.,/-].)
    (?:
        (?<=\d)(?P<alnum>\d{7}-?[A-Z]|\d{5}[-+A]\d{3}[0-9A-Y])(?![\w-])
      | [\d .()-]{5,26}\d(?![\w-]|\.\d)
    )
    """,
    re.VERBOSE,
)
_CAPITALS = re.compile(
    r"""
    [A-Z](?<![\w-].)
    (?:
        [A-Z]\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?
      | [A-Z][ ]?\d{2}[ ]?\d{2}[ ]?\d{2}[ ]?[A-D]
      | [A-Z]{5}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]
      | -?\d{7}-?[A-Z]
    )(?![\w-])
    """,
    re.VERBOSE,
)
# Secrets are looked for only where one of their prefixes occurs (substring searches cost next to nothing).
_SECRET_PREFIXES = ("sk-", "sk_", "rk_", "AKIA", "ASIA", "ABIA", "ACCA", "gh", "xox", "AIza", "eyJ", "Bearer")
_SECRETS = re.compile(
    r"""
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
  | (?<![\w-])Bearer[ \t]+(?P<bearer>[A-Za-z0-9._~+/-]{16,}=*)
    """,
    re.VERBOSE,
)

# Emails and URL credentials are read outwards from each `@` (found by `str.find`, far faster than a pattern
# that could start at any letter): the token it is in, then the shapes anchored at the token's start.
_TOKEN_ENDS = (" ", "\n", "\t", '"', "'", "<", ">", "(", ")", ",", ";")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s:/@]+:[^\s/@]+@[^\s/?#\"'<>]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-])")
_LOCAL_START = re.compile(r"[A-Za-z0-9._%+-]+\Z")
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
_PIECE = re.compile(r"[^ ]+")

# National identifiers written with digits only: (shape, validator). A checksum alone on a plain run of digits
# would flag order numbers, so each needs the shape its country writes it in.
_NATIONAL: dict[int, tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...]] = {
    11: ((re.compile(r"\d{3}\.\d{3}\.\d{3}-\d{2}"), cpf.is_valid),),
    9: ((re.compile(r"\d{3}([ -])\d{3}\1\d{3}"), sin.is_valid),),
    12: (
        (re.compile(r"[2-9]\d{3}([ -])\d{4}\1\d{4}"), aadhaar.is_valid),
        (re.compile(r"\d{8}[-+]\d{4}"), personnummer.is_valid),
    ),
    10: ((re.compile(r"\d{6}[-+]\d{4}"), personnummer.is_valid),),
    15: ((re.compile(r"[12] ?\d{2} ?\d{2} ?\d{2} ?\d{3} ?\d{3} ?\d{2}"), nir.is_valid),),
}  # by the count of digits

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


def _phone(candidate: str, digits: str) -> bool:
    n = len(digits)
    if candidate[0] == "+":
        if not 8 <= n <= 15:
            return False
        try:
            number = phonenumbers.parse(candidate, None)
        except phonenumbers.NumberParseException:
            return False
    # National formats: NANP's 10 digits (area code 2-9, or 11 with the leading 1), the UK's 0 and 10-11 digits.
    # Anything else is not a phone number of these regions. The candidate pattern already allows only digits and
    # separators, so the number is built from its digits (what the parser would find, without its cost).
    elif (n == 10 and digits[0] in "23456789") or (n == 11 and digits[0] == "1"):
        number = phonenumbers.PhoneNumber(country_code=1, national_number=int(digits[-10:]))
    elif digits[0] == "0" and 10 <= n <= 11:
        number = phonenumbers.PhoneNumber(country_code=44, national_number=int(digits[1:]))
    else:
        return False
    return bool(phonenumbers.is_valid_number(number))


def _numeric(candidate: str) -> str | None:
    """The type of a run of digits and separators, or None. The count of digits picks the few checks that
    can apply (most look-alikes are refused before any validator runs)."""
    digits = _NON_DIGIT.sub("", candidate)
    n = len(digits)
    if n <= 12 and candidate.count(".") == 3 and _IPV4.fullmatch(candidate):
        try:
            ipaddress.IPv4Address(candidate)
        except ValueError:
            return None
        return IP_ADDRESS
    # Written without a country code, nothing covered has fewer than 9 digits (dates, order numbers end here).
    if n < 9 and (n < 7 or candidate[0] != "+"):
        return None
    if n == 9 and _ssn(candidate):
        return US_SSN
    if 13 <= n <= 19 and candidate[0].isdigit() and _CARD_SHAPE.fullmatch(candidate) and _card(digits):
        return CREDIT_CARD
    for shape, valid in _NATIONAL.get(n, ()):
        if shape.fullmatch(candidate) and valid(candidate):
            return NATIONAL_ID
    if _phone(candidate, digits):
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
    if " " not in candidate or end - start < 9:
        return
    pieces = [(m.start(), m.end()) for m in _PIECE.finditer(candidate)]
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
    for m in _DIGITS.finditer(text):
        if m.lastgroup != "alnum":
            _numeric_spans(text, m.start(), m.end(), wanted, spans)
            continue
        kind = _alnum(m.group())
        if kind is not None:
            if kind in wanted:
                spans.append(Span(m.start(), m.end(), kind))
        elif m.group()[-1].isdigit():  # a HETU's shape that is not one: `880320-0016` is a personnummer
            _numeric_spans(text, m.start(), m.end(), wanted, spans)
    for m in _CAPITALS.finditer(text):
        kind = _upper(m.group())
        if kind is not None and kind in wanted:
            spans.append(Span(m.start(), m.end(), kind))
    if SECRET in wanted:
        _secrets(text, spans)
    extra: list[Span] = []
    if "@" in text and (EMAIL in wanted or URL_CREDENTIALS in wanted):
        _at_signs(text, wanted, extra)
    if "::" in text or text.count(":") >= 7:
        if IP_ADDRESS in wanted:
            for m in _IPV6.finditer(text):
                if _ipv6(m.group()):
                    extra.append(Span(m.start(), m.end(), IP_ADDRESS))
    if "-----BEGIN" in text and SECRET in wanted:
        extra.extend(Span(m.start(), m.end(), SECRET) for m in _PEM.finditer(text))
    if extra or len(spans) > 1:
        spans = _merge(spans, extra)
    return spans


def _secrets(text: str, out: list[Span]) -> None:
    """Secrets start with one of a few prefixes: the pattern is tried only where one occurs (`str.find` runs in
    C; scanning the whole text with the pattern tries its alternation at every position)."""
    starts: list[int] = []
    for prefix in _SECRET_PREFIXES:
        at = text.find(prefix)
        while at != -1:
            starts.append(at)
            at = text.find(prefix, at + 1)
    if not starts:
        return
    done = 0
    for at in sorted(starts):
        if at < done:
            continue
        m = _SECRETS.match(text, at)
        if m is not None:
            group = "bearer" if m.lastgroup == "bearer" else 0
            out.append(Span(m.start(group), m.end(group), SECRET))
            done = m.end()


def _at_signs(text: str, wanted: frozenset[str], out: list[Span]) -> None:
    at = text.find("@")
    done = 0  # findings do not overlap: an `@` inside the last one is skipped
    while at != -1:
        if at >= done:
            window = max(done, at - 256)
            start = max(window, max(text.rfind(c, window, at) for c in _TOKEN_ENDS) + 1)
            url = _URL.match(text, start) if "://" in text[start:at] else None
            if url is not None and url.end() > at:
                if URL_CREDENTIALS in wanted:
                    out.append(Span(url.start(), url.end(), URL_CREDENTIALS))
                done = url.end()
            else:
                local = _LOCAL_START.search(text, max(start, at - 64), at)
                email = _EMAIL.match(text, local.start()) if local is not None else None
                if email is not None and EMAIL in wanted:
                    out.append(Span(email.start(), email.end(), EMAIL))
                    done = email.end()
        at = text.find("@", at + 1)


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
