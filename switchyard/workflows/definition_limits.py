"""Bounds on a workflow definition before anything expensive looks at it.

A definition is data from a tenant: its size is bounded by the request body, but not what parsing and checking
it can cost. YAML aliases let 360 bytes stand for gigabytes (the "billion laughs": each level refers to the one
before several times), so aliases are refused outright: the parser stops at the first one, before any expansion,
and nothing expanded is stored. The parsed value (from YAML or JSON) is then walked once against fixed limits
on its nesting depth, node count, string length and template tags (compiling templates is the costliest part
of validation: about 0.25 ms a tag).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent

from switchyard.core.errors import InvalidRequest

MAX_DEPTH = 64  # nested objects and lists; a JSON schema in a step's input stays well under it
MAX_NODES = 100_000  # every object, list and scalar
MAX_STRING_CHARS = 100_000  # one string (a prompt, a template)
MAX_TEMPLATE_TAGS = 2_000  # `{{` and `{%` across the definition


def _too_big(what: str) -> InvalidRequest:
    return InvalidRequest(f"the definition is too large: {what}", param="body")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases, and counting depth, nodes and scalar length as it composes."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            raise InvalidRequest(
                "YAML aliases (*name) are not accepted in a workflow definition; write the value out",
                param="body",
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _too_big(f"more than {MAX_NODES} values")
        if isinstance(event, ScalarEvent) and len(event.value) > MAX_STRING_CHARS:
            raise _too_big(f"a string longer than {MAX_STRING_CHARS} characters")
        nesting = isinstance(event, MappingStartEvent | SequenceStartEvent)
        if nesting:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _too_big(f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            if nesting:
                self._depth -= 1


def load_yaml(text: bytes | str) -> Any:
    """A definition from YAML: aliases refused, limits checked while parsing (InvalidRequest, param body)."""
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"not valid YAML: {exc}", param="body") from None
    except RecursionError:
        raise _too_big(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()
    check_shape(data)
    return data


def check_shape(data: Any) -> None:
    """Depth, node count, string length and template tags of parsed data (JSON or YAML), without recursion."""
    nodes = 0
    tags = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _too_big(f"more than {MAX_NODES} values")
        if isinstance(value, str):
            if len(value) > MAX_STRING_CHARS:
                raise _too_big(f"a string longer than {MAX_STRING_CHARS} characters")
            if "{" in value:
                tags += value.count("{{") + value.count("{%")
                if tags > MAX_TEMPLATE_TAGS:
                    raise _too_big(f"more than {MAX_TEMPLATE_TAGS} template tags ({{{{ or {{%)")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _too_big(f"nested more than {MAX_DEPTH} levels deep")
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for key, item in items:
                if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                    raise _too_big(f"a key longer than {MAX_STRING_CHARS} characters")
                stack.append((item, depth + 1))
