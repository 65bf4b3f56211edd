"""DecAF prompt texts (spec §1–§2), with the reference's exact wording.

The rollout depends on every prompt token, so these strings are data that must match the reference
byte for byte (the golden e2e `*_input_ids` check the object-class and background prompts; the object
choice prompt is text-only and steers only the chosen class name). Version 0 is the default used in the
paper; versions 1–3 are the reference's ablation variants, kept so `prompt_version` stays meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PromptError

__all__ = [
    "OBJECT_CLASS_TEMPLATES",
    "BACKGROUND_TEMPLATES",
    "OBJECT_CHOICE_TEMPLATES",
    "normalize_expression",
    "object_class_prompt",
    "background_prompt",
    "object_choice_prompt",
]

OBJECT_CLASS_TEMPLATES: dict[int, str] = {
    0: (
        "{sent} \n"
        "What is the main object (or objects) referred to in the given expression or question? \n"
        "Focus on the **primary subject or agent** involved in the described action or behavior. "
        "Respond with a single word (e.g., 'cat', 'person', 'dog') that best describes the target object(s). "
    ),
    1: "{sent} \nIdentify the primary object referred to in the expression and answer with a single word. \n",
    2: (
        "{sent} \n"
        "Identify the primary object referred to in the expression. \n"
        "Focus on the **primary subject or agent** involved in the described action or behavior. "
        "Respond with a single word (e.g., 'cat', 'person', 'dog') that best describes the target object(s). "
    ),
    3: (
        "{sent} \n"
        "Determine the primary subject or agent mentioned in the expression or question, "
        "and provide the object's label within a single word or phrase. "
    ),
}

BACKGROUND_TEMPLATES: dict[int, str] = {
    0: (
        "Describe the background scene of the video, excluding any {obj_name}. "
        "Answer the question using a single word or phrase."
    ),
    1: "Describe the background scene of the video. Answer the question using a single word or phrase.",
    2: "Describe the background of the video while excluding any {obj_name}, using a single word or short phrase.",
    # version 3 names the expression instead of the chosen class
    3: (
        "Describe the background scene of the video, excluding the objects referred to in the given "
        "expression or question '{sent}'. Answer the question using a single word or phrase."
    ),
}

OBJECT_CHOICE_TEMPLATES: dict[int, str] = {
    0: (
        "Given:\n"
        "- Expression: '{ref_query}'\n"
        "- Candidate object class list: {obj_cls_list}\n"
        "Goal: Identify the object class referred to by the expression. Instructions:\n"
        "1. If the expression is **clear**, rely on it directly (e.g., 'a person driving a car' → 'person').\n"
        "2. If the expression is **vague**, use the object class list to support your decision "
        "(e.g., check frequency and plausibility).\n"
        "3. Avoid defaulting to the most frequent class unless the expression lacks clarity.\n"
        "Output the most likely referred object class - just the label.\n"
    ),
    1: (
        "Given the expression \u2018{ref_query}\u2019 and the candidate object classes {obj_cls_list}, "
        "select the single class label that best matches the object referred to in the expression.\n"
    ),
    2: (
        "Using the expression \u2018{ref_query}\u2019 and the candidate object classes {obj_cls_list}, "
        "determine which object class the expression refers to.\n"
        "If the reference is explicit, rely on the expression; if ambiguous, use the class list as support.\n"
        "Output only the most likely object class.\n"
    ),
    # version 3 ignores the candidate list
    3: (
        "Given:\n"
        "- Expression: '{ref_query}'\n"
        "Goal: Identify the object class referred to by the expression. "
        "(e.g., 'a person driving a car' → 'person').\n"
        "Output the most likely referred object class - just the label.\n"
    ),
}


def normalize_expression(expression: str | None) -> str:
    """Spec §1: strip whitespace; append '.' unless it already ends with '?' or '.'."""
    text = (expression or "").strip()
    if not text:
        raise PromptError("the text prompt is empty: describe the object to segment")
    if not text.endswith(("?", ".")):
        text += "."
    return text


def _template(templates: dict[int, str], version: int, kind: str) -> str:
    try:
        return templates[int(version)]
    except KeyError:
        raise PromptError(f"unknown {kind} prompt version {version} (known: {sorted(templates)})") from None


def object_class_prompt(expression: str, version: int = 0) -> str:
    """The object-class question; the expression is normalised, then lower-cased (reference rule)."""
    sent = normalize_expression(expression).lower()
    return _template(OBJECT_CLASS_TEMPLATES, version, "object-class").format(sent=sent)


def background_prompt(obj_name: str, expression: str | None = None, version: int = 0) -> str:
    """The background question; `obj_name` is used as given (the object choice already lower-cased it)."""
    template = _template(BACKGROUND_TEMPLATES, version, "background")
    if "{sent}" in template:
        if expression is None:
            raise PromptError(f"background prompt version {version} needs the expression")
        return template.format(sent=normalize_expression(expression).lower())
    return template.format(obj_name=obj_name)


def object_choice_prompt(expression: str, candidates: Sequence[str], version: int = 0) -> str:
    """The text-only choice among all answers: each lower-cased, joined by ',' (no space), duplicates kept."""
    ref_query = normalize_expression(expression).lower()
    obj_cls_list = ",".join(c.lower() for c in candidates)
    return _template(OBJECT_CHOICE_TEMPLATES, version, "object-choice").format(
        ref_query=ref_query, obj_cls_list=obj_cls_list
    )
