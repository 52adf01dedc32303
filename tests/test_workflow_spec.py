"""Workflow specs without any process: graph validation, template checks and typed rendering."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.core.errors import InvalidRequest
from switchyard.workflows.spec import WorkflowSpec
from switchyard.workflows.templates import (
    TemplateError,
    compile_check,
    references,
    render_value,
    truthy,
    uses_item,
)
from switchyard.workflows.validation import Problem, ensure_valid, validate_spec

MODELS = {"gpt": "chat", "vec": "embed", "mod": "moderate", "risk": "predict"}


def chat(sid: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "type": "chat",
        "model": "gpt",
        "input": {"messages": [{"role": "user", "content": content}]},
        **extra,
    }


def spec(*steps: dict[str, Any], output: Any = None) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"name": "wf", "steps": list(steps), "output": output})


def problems(s: WorkflowSpec) -> list[Problem]:
    return validate_spec(s, MODELS)


def params(s: WorkflowSpec) -> list[str]:
    return [p.param for p in problems(s)]


# --- graph ------------------------------------------------------------------------------------------------------


def test_diamond_is_valid_with_its_parents() -> None:
    s = spec(
        chat("a"),
        chat("b", depends_on=["a"]),
        chat("c", depends_on=["a"]),
        chat("d", depends_on=["b", "c"]),
        output={"summary": "{{ steps.d.output.content }}"},
    )
    assert problems(s) == []
    graph = ensure_valid(s, MODELS)
    assert graph.order == ["a", "b", "c", "d"]
    assert graph.parents == {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}}
    assert graph.children == {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}


def test_reference_implies_a_dependency() -> None:
    s = spec(
        chat("explain", "The risk label is {{ steps.classify.output.outputs.label[0] }}. Explain it."),
        {"id": "classify", "type": "predict", "model": "risk", "input": {"inputs": {"x": "{{ input.features }}"}}},
        chat("gate", when="{{ steps['explain'].output.content != '' }}"),
    )
    graph = ensure_valid(s, MODELS)
    assert graph.parents["explain"] == {"classify"}
    assert graph.parents["gate"] == {"explain"}
    assert graph.order == ["classify", "explain", "gate"]


def test_three_cycle_reported_once_with_its_steps() -> None:
    s = spec(
        chat("a", depends_on=["c"]),
        chat("b", depends_on=["a"]),
        chat("c", depends_on=["b"]),
        chat("d", depends_on=["c"]),  # downstream of the cycle, not on it
    )
    found = problems(s)
    assert len(found) == 1
    assert found[0].param == "steps[0].depends_on"
    assert found[0].message.startswith("cycle: a -> c -> b -> a")


def test_cycle_through_an_implied_dependency() -> None:
    s = spec(chat("a", "{{ steps.b.output.content }}"), chat("b", depends_on=["a"]))
    [found] = problems(s)
    assert found.param == "steps[0].depends_on"
    assert "cycle: a -> b -> a" in found.message
    assert "a -> b implied by references" in found.message


def test_unknown_step_in_depends_on() -> None:
    s = spec(chat("a"), chat("b", depends_on=["a", "nope"]))
    [found] = problems(s)
    assert found == Problem("steps[1].depends_on[1]", "unknown step 'nope'")


def test_self_dependency_and_duplicate_ids() -> None:
    s = spec(chat("a", depends_on=["a"]), chat("a"))
    assert set(params(s)) == {"steps[0].depends_on[0]", "steps[1].id"}


def test_unknown_model() -> None:
    s = spec({**chat("a"), "model": "gpt-9"})
    assert problems(s) == [Problem("steps[0].model", "unknown model 'gpt-9'")]


def test_model_of_the_wrong_type() -> None:
    s = spec(chat("a"), {**chat("b"), "model": "vec"})
    [found] = problems(s)
    assert found.param == "steps[1].model"
    assert "embed" in found.message
    assert "chat" in found.message


# --- templates in the spec --------------------------------------------------------------------------------------


def test_bad_template_syntax_names_the_field() -> None:
    s = spec(chat("a", "Explain {{ input.text "), output={"summary": "{{ steps.a.output.content | nofilter }}"})
    found = problems(s)
    assert [p.param for p in found] == ["steps[0].input.messages[0].content", "output.summary"]
    assert all(p.message.startswith("bad template") for p in found)


def test_reference_to_an_unknown_step() -> None:
    s = spec(chat("a", when="{{ steps.ghost.output }}"), output={"summary": "{{ steps.phantom.output.content }}"})
    assert problems(s) == [
        Problem("steps[0].when", "unknown step 'ghost'"),
        Problem("output.summary", "unknown step 'phantom'"),
    ]


def test_item_outside_for_each() -> None:
    s = spec(
        chat("a", "Look at {{ item.name }}"),
        chat("b", "Look at {{ item.name }}", for_each="{{ input.portfolios }}", max_parallel=4),
        chat("c", max_parallel=2),
    )
    assert params(s) == ["steps[0].input.messages[0].content", "steps[2].max_parallel"]


def test_for_each_must_be_one_expression() -> None:
    s = spec(chat("a", for_each="portfolios: {{ input.portfolios }}"))
    assert params(s) == ["steps[0].for_each"]


def test_dynamic_steps_access_and_unknown_variables() -> None:
    s = spec(chat("a", "{{ steps[input.which].output }}"), chat("b", "{{ inputs.text }}"))
    found = problems(s)
    assert [p.param for p in found] == ["steps[0].input.messages[0].content", "steps[1].input.messages[0].content"]
    assert "literal id" in found[0].message
    assert "unknown variable 'inputs'" in found[1].message


def test_step_input_checked_for_its_type_around_templates() -> None:
    s = spec(
        # single expressions may become any JSON value: no complaint about messages being a template
        {"id": "a", "type": "chat", "model": "gpt", "input": {"messages": "{{ input.messages }}"}},
        # text templates are text: fine for content; literal problems are still found
        {
            "id": "b",
            "type": "chat",
            "model": "gpt",
            "input": {"messages": [{"role": "{{ input.role }}", "content": "x {{ input.y }}"}], "temperature": 5},
        },
        {"id": "c", "type": "embed", "model": "vec", "input": {"text": "{{ input.text }}"}},
    )
    assert params(s) == ["steps[1].input.temperature", "steps[2].input.input", "steps[2].input.text"]


def test_several_problems_reported_at_once() -> None:
    s = spec(
        {**chat("a", "{{ steps.zzz.output }}"), "model": "nope"},
        chat("b", depends_on=["missing"], when="{{ x ) }}"),
        chat("c", depends_on=["d"]),
        chat("d", depends_on=["c"]),
        output={"summary": "{{ item }}"},
    )
    assert params(s) == [
        "steps[0].model",
        "steps[0].input.messages[0].content",
        "steps[1].depends_on[0]",
        "steps[1].when",
        "steps[2].depends_on",
        "output.summary",
    ]
    with pytest.raises(InvalidRequest) as caught:
        ensure_valid(s, MODELS)
    err = caught.value
    assert err.status == 422
    assert err.param == "steps[0].model"
    assert err.message.count("; ") == 5
    assert "steps[0].model (step 'a'): unknown model 'nope'" in err.message
    assert "cycle: c -> d -> c" in err.message


# --- template functions -----------------------------------------------------------------------------------------

CONTEXT: dict[str, Any] = {
    "input": {"portfolios": [{"name": "p1"}, {"name": "p2"}], "n": 3, "rate": 0.5, "cfg": {"a": 1, "b": [True]}},
    "steps": {"classify": {"output": {"outputs": {"label": [2, 0]}}}},
    "item": {"name": "p1"},
}


def test_rendering_keeps_json_types() -> None:
    assert render_value("{{ input.portfolios }}", CONTEXT) == [{"name": "p1"}, {"name": "p2"}]
    assert render_value("  {{ input.n }}\n", CONTEXT) == 3
    assert render_value("{{ input.rate * 2 }}", CONTEXT) == 1.0
    assert render_value("{{ input.cfg }}", CONTEXT) == {"a": 1, "b": [True]}
    assert render_value("{{ steps.classify.output.outputs.label[0] != 0 }}", CONTEXT) is True
    assert render_value("{{ input.portfolios | map(attribute='name') }}", CONTEXT) == ["p1", "p2"]
    assert render_value("{{ (1, 2) }}", CONTEXT) == [1, 2]
    assert render_value("{{ none }}", CONTEXT) is None


def test_rendering_text_and_structures() -> None:
    label = "The risk label is {{ steps.classify.output.outputs.label[0] }}. Explain it."
    value = {
        "messages": [{"role": "user", "content": label}],
        "n": "{{ input.n }}",
        "names": ["{{ item.name }}", "plain", 7, None],
        "both": "{{ input.n }} and {{ input.rate }}",
        "json": "cfg={{ input.cfg }}",
    }
    assert render_value(value, CONTEXT) == {
        "messages": [{"role": "user", "content": "The risk label is 2. Explain it."}],
        "n": 3,
        "names": ["p1", "plain", 7, None],
        "both": "3 and 0.5",
        "json": 'cfg={"a": 1, "b": [true]}',
    }


def test_undefined_variable_raises() -> None:
    with pytest.raises(TemplateError, match="input.missing"):
        render_value("{{ input.missing }}", CONTEXT)
    with pytest.raises(TemplateError, match="nothing"):
        render_value({"x": ["text {{ nothing }}"]}, CONTEXT)
    with pytest.raises(TemplateError):
        render_value("{{ steps.other.output }}", CONTEXT)


@pytest.mark.parametrize(
    "text",
    [
        "{{ input.__class__ }}",
        "{{ input.__class__.__mro__ }}",
        "x {{ input.cfg.__class__.__subclasses__() }}",
        "{{ input.portfolios.append(1) }}",
        "{{ input.cfg.update({'a': 2}) }}",
        "{{ 'a' * 100000000 }}",
    ],
)
def test_sandbox_blocks_unsafe_access(text: str) -> None:
    with pytest.raises(TemplateError):
        render_value(text, CONTEXT)
    assert CONTEXT["input"]["cfg"] == {"a": 1, "b": [True]}


def test_inspection() -> None:
    assert compile_check("{{ steps.a.output }}") is None
    assert compile_check("{{ a ") is not None
    assert compile_check("{% include 'x' %}") is not None
    assert references("{{ steps.a.output }} and {{ steps['b'].output.x }} {{ input.steps }}") == {"a", "b"}
    assert uses_item("{{ item.name }}")
    assert not uses_item("{% for item in input.xs %}{{ item }}{% endfor %}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("false", False),
        ("False", False),
        ("0", False),
        ("", False),
        (" null ", False),
        ("true", True),
        ("yes", True),
        (0, False),
        (2, True),
        (None, False),
        ([], False),
        ([0], True),
    ],
)
def test_truthy(value: Any, expected: bool) -> None:
    assert truthy(value) is expected
