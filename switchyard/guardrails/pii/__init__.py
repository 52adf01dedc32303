"""The PII guardrail: detection (`detect`), the modes (`scrub`), where it applies to a call (`apply`), the key of
`hash` mode (`keys`)."""

from switchyard.guardrails.pii.apply import (
    AnswerScrub,
    ScrubbedRequest,
    map_input,
    map_result,
    response_guardrail,
    response_scrubber,
    scrub_request,
    with_response,
)
from switchyard.guardrails.pii.detect import Span, detect
from switchyard.guardrails.pii.keys import hash_key, load_hash_key
from switchyard.guardrails.pii.scrub import Restorer, Scrubber, StreamRestorer, StreamScrubber

__all__ = [
    "AnswerScrub",
    "Restorer",
    "ScrubbedRequest",
    "Scrubber",
    "Span",
    "StreamRestorer",
    "StreamScrubber",
    "detect",
    "hash_key",
    "load_hash_key",
    "map_input",
    "map_result",
    "response_guardrail",
    "response_scrubber",
    "scrub_request",
    "with_response",
]
