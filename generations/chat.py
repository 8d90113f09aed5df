"""Chat messages become one prompt: the model catalogue and its chat templates.

The OpenAI chat API sends a list of messages; a KoboldAI server takes one string. Which
markers turn the messages into that string depends on the model that will read it, so the
catalogue (catalogue.json, data rather than code, plus the administrators' overrides) maps
model names to templates. A model name is reduced to its family first (`family`): servers
announce names such as `koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M`, and a client may say
`meta-llama-3-8b-instruct`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError

from generations.models import ChatTemplateOverride

CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")
DEFAULT_TEMPLATE = "chatml"
# The longest model name the cluster takes anywhere (a server's models, a prompt's models,
# the OpenAI `model`): the Job.model column's size. Longer names have no template.
MODEL_NAME_MAX = 255
# A file type or quantisation suffix is never longer than this, and a name carries only a
# few of them (`-imat-Q4_K_M.gguf`): `family` looks at no more, so its cost is linear in
# the name whatever the name is (the patterns are anchored at the end, and Python's `re`
# tries them from every position of what it is given).
SUFFIX_TAIL = 64
SUFFIXES_MAX = 6
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Template:
    key: str
    name: str
    system: tuple[str, str] | None  # None: the model has no system turn
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    stop: tuple[str, ...]


@dataclass(frozen=True)
class TemplateChoice:
    template: Template
    # Why the default was used, for the warning header; "" when the model is known.
    warning: str = ""


@cache
def catalogue() -> dict[str, Any]:
    return json.loads(CATALOGUE_PATH.read_text(encoding="utf-8"))


@cache
def templates() -> dict[str, Template]:
    found = {}
    for key, spec in catalogue()["templates"].items():
        found[key] = Template(
            key=key,
            name=spec["name"],
            system=tuple(spec["system"]) if spec["system"] is not None else None,
            user=tuple(spec["user"]),
            assistant=tuple(spec["assistant"]),
            generation=spec["generation"],
            stop=tuple(spec["stop"]),
        )
    return found


@cache
def _family_rules() -> tuple[re.Pattern[str], list[re.Pattern[str]]]:
    rules = catalogue()["family"]
    prefix = re.compile(rules["prefix_pattern"], re.IGNORECASE)
    suffixes = [re.compile(p, re.IGNORECASE) for p in rules["suffix_patterns"]]
    return prefix, suffixes


@lru_cache(maxsize=4096)  # every served name, at every request that names a model
def family(model: str) -> str:
    """The model's family: without backend prefix, publisher, file type or quantisation.

    `koboldcpp/Meta-Llama-3-8B-Instruct-Q4_K_M` and `meta-llama/Meta-Llama-3-8B-Instruct`
    are both `meta-llama-3-8b-instruct`.
    """
    prefix, suffixes = _family_rules()
    name = prefix.sub("", model.strip(), count=1)
    for _ in range(SUFFIXES_MAX):
        shorter = _strip_suffix(name, suffixes)
        if shorter == name:
            break
        name = shorter
    return name.lower()


def _strip_suffix(name: str, suffixes: list[re.Pattern[str]]) -> str:
    """`name` without the first of `suffixes` that ends it (never down to nothing)."""
    head, tail = name[:-SUFFIX_TAIL], name[-SUFFIX_TAIL:]
    for suffix in suffixes:
        shorter = head + suffix.sub("", tail, count=1)
        if shorter != name and shorter:
            return shorter
    return name


def check_override(pattern: str, template: str) -> None:
    """An override must compile and name a template of the catalogue (admin validation)."""
    errors = {}
    try:
        re.compile(pattern)
    except re.error as error:
        errors["pattern"] = f"Not a regular expression: {error}."
    if template not in templates():
        errors["template"] = f"Unknown template; one of: {', '.join(templates())}."
    if errors:
        raise ValidationError(errors)


Rules = tuple[tuple[str, str], ...]


def _rules() -> Rules:
    """(pattern, template key) in the order they are tried: overrides, then the catalogue."""
    overrides = [
        (rule.pattern, rule.template)
        for rule in ChatTemplateOverride.objects.all()
        if rule.template in templates()
    ]
    return tuple(
        overrides + [(rule["pattern"], rule["template"]) for rule in catalogue()["models"]]
    )


def template_for(model: str, rules: Rules | None = None) -> Template | None:
    """The template of a model, or None when no rule knows it (nor one longer than any name
    the cluster stores, which bounds what an administrator's pattern is run on)."""
    if len(model) > MODEL_NAME_MAX:
        return None
    key = _template_key(model, rules if rules is not None else _rules())
    return templates()[key] if key is not None else None


@lru_cache(maxsize=4096)  # a chat for any model asks it of every served name
def _template_key(model: str, rules: Rules) -> str | None:
    name = family(model)
    for pattern, key in rules:
        try:
            if re.search(pattern, name, re.IGNORECASE):
                return key
        except re.error:
            continue  # an override saved before validation existed: skip it
    return None


def choose_template(requested: str, served: list[str]) -> TemplateChoice:
    """The template for a chat request naming `requested` ("" or "*": any model).

    A named model uses its own template. For any model, the template every server that may
    serve it agrees on; when they disagree or nobody is known, ChatML with a warning.
    """
    rules = _rules()
    default = templates()[DEFAULT_TEMPLATE]
    if requested:
        found = template_for(requested, rules)
        if found is not None:
            return TemplateChoice(found)
        return TemplateChoice(
            default, f"No chat template is known for model '{requested}'; ChatML was used."
        )
    found_all = {template_for(name, rules) for name in served}
    if len(found_all) == 1 and None not in found_all:
        return TemplateChoice(found_all.pop())
    return TemplateChoice(
        default,
        "No single chat template fits every model that may serve this request; ChatML was "
        "used. Name a model to get its template.",
    )


def render(
    messages: list[dict[str, str]], template: Template, *, continue_last: bool = False
) -> str:
    """The prompt for `messages` (role and content each), ending with the assistant's turn.

    A template without a system turn gets the system text in front of the first user
    message, as those models' own templates do. With `continue_last` the last message (the
    assistant's) is left open for the model to continue (Mistral's `prefix`, KoboldAI
    Lite's `partial`) instead of opening a new turn.
    """
    parts: list[str] = []
    pending_system: list[str] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system" and template.system is None:
            pending_system.append(content)
            continue
        if role == "user" and pending_system:
            content = "\n\n".join([*pending_system, content])
            pending_system = []
        prefix, suffix = getattr(template, role)
        parts.append(f"{prefix}{content}{suffix}")
    if pending_system:  # system messages and no user message after them
        prefix, suffix = template.user
        system = "\n\n".join(pending_system)
        parts.append(f"{prefix}{system}{suffix}")
    if continue_last and messages and messages[-1]["role"] == "assistant":
        suffix = template.assistant[1]
        if suffix:
            parts[-1] = parts[-1][: -len(suffix)]
        return "".join(parts)
    parts.append(template.generation)
    return "".join(parts)


def estimate_tokens(text: str) -> int:
    """The cluster's token rule (DESIGN §4.6: a quarter of the characters, rounded up), as an
    estimate of any text: not the model's tokenizer, which no server here exposes."""
    return math.ceil(len(text) / 4)
