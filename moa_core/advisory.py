"""What references see and what the aggregator gets back from them.

`advisory_view` flattens a conversation into plain user/assistant text turns that any strict
provider accepts; `guidance_block` and `with_guidance` hand the references' advice to the
aggregator. The prompt texts here are ours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import orjson

from moa_core.values import ImagePart, Message, ToolCall

if TYPE_CHECKING:
    from moa_core.events import ReferenceResult

REFERENCE_SYSTEM_PROMPT = (
    "You are one of several expert advisors consulted before another model answers. That other "
    "model, the acting model, owns the conversation below: it will write the reply and it alone "
    "can use tools such as web fetches or calculators. You cannot act, run tools or open links, "
    "and you do not need to; work from what the conversation shows and treat anything it "
    "mentions as real.\n\n"
    "Give the acting model your best private advice: what the user actually needs, the strongest "
    "answer or approach you can see, facts and reasoning it should use, steps or tools worth "
    "taking next, and mistakes, risks or gaps in what has happened so far. Disagree where you "
    "think the conversation went wrong. Be concrete and compact. Do not address the user, do not "
    "greet, and do not mention being an advisor or lacking tools: the user never sees your text."
)

# Appended when the conversation ends on the acting model's side, so the view ends on a user
# turn (providers without assistant prefill reject a trailing assistant turn) without hiding
# the latest state.
JUDGE_STATE_PROMPT = (
    "(Advisor request) The conversation above shows where the acting model stands now. Assess "
    "that state: is it on track, what should it do or say next, and what should it watch out for?"
)

DEFAULT_TOOL_RESULT_BUDGET = 4000


def cut_middle(text: str, budget: int = DEFAULT_TOOL_RESULT_BUDGET) -> str:
    """Keep the head and the tail of a long text around a marker naming what was left out."""
    if len(text) <= budget:
        return text
    head = budget // 2
    tail = budget - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[… {omitted} characters left out …]\n{text[len(text) - tail:]}"


def render_tool_call(call: ToolCall) -> str:
    return f"[tool call: {call.name}({call.arguments})]" if call.arguments.strip() else f"[tool call: {call.name}()]"


def advisory_view(
    messages: Sequence[Message], tool_result_budget: int = DEFAULT_TOOL_RESULT_BUDGET
) -> tuple[Message, ...]:
    """The conversation as references see it: text-only user/assistant turns ending on a user turn.

    System messages are dropped; tool calls become inline text; tool results are folded (cut to
    the budget) into the assistant turn before them; consecutive turns of one role are joined.
    A user turn's images stay with it (`fan_out` turns them into text for references that
    cannot see).
    """
    turns: list[tuple[str, list[str], list[ImagePart]]] = []

    def add(role: str, text: str, images: Sequence[ImagePart] = ()) -> None:
        if turns and turns[-1][0] == role:
            if text:
                turns[-1][1].append(text)
            turns[-1][2].extend(images)
        else:
            turns.append((role, [text] if text else [], list(images)))

    latest_user: Message | None = None
    for message in messages:
        if message.role == "user":
            latest_user = message
            if message.content.strip() or message.images:
                add("user", message.content if message.content.strip() else "", message.images)
        elif message.role == "assistant":
            parts = [message.content.strip()] if message.content.strip() else []
            parts.extend(render_tool_call(call) for call in message.tool_calls)
            if parts:
                add("assistant", "\n".join(parts))
        elif message.role == "tool":
            label = message.name or "tool"
            add("assistant", f"[tool result from {label}:\n{cut_middle(message.content, tool_result_budget)}]")

    view = [
        Message(role, "\n\n".join(parts), images=tuple(images))  # type: ignore[arg-type]
        for role, parts, images in turns
    ]
    if not view:
        if latest_user is not None:
            return (Message("user", latest_user.content, images=latest_user.images),)
        return (Message("user", JUDGE_STATE_PROMPT),)
    if view[-1].role == "assistant":
        view.append(Message("user", JUDGE_STATE_PROMPT))
    return tuple(view)


def view_key(view: Sequence[Message], preset: str, labels: Sequence[str]) -> str:
    """A stable hash of an advisory view: identical state means identical key."""
    # orjson: UTF-8 bytes at once, where json.dumps built an encoder for ensure_ascii=False on
    # every turn (the key is only compared with keys made here, so its exact bytes are free).
    payload = orjson.dumps(
        [preset, list(labels), [[m.role, m.content, [_image_key(i) for i in m.images]] for m in view]]
    )
    return hashlib.sha256(payload).hexdigest()


def _image_key(image: ImagePart) -> list:
    # The same picture with and without its bytes at hand is a different state for the models.
    return [image.name, image.digest, bool(image.data), len(image.data)]


def guidance_block(preset: str, aggregator_label: str, results: Sequence[ReferenceResult]) -> str:
    """The references' advice as one block for the aggregator; unusable ones are named as such."""
    asked, answered = len(results), sum(1 for r in results if r.status == "ok")
    # Say how many really answered: "2 advisors gave advice" over two timeouts misleads the model.
    if answered == asked:
        opening = (
            f"Before you answer, {asked} advisor model(s) of the '{preset}' mixture gave private "
            f"advice on this conversation. You ({aggregator_label}) are the acting model: weigh the "
            "advice, resolve disagreements with your own judgement, use tools if they help, and then "
            "answer the user directly."
        )
    elif answered:
        opening = (
            f"Before you answer, {asked} advisor model(s) of the '{preset}' mixture were asked for "
            f"private advice on this conversation; only {answered} answered (the others are marked "
            f"below). You ({aggregator_label}) are the acting model: weigh the advice you have, use "
            "your own judgement and tools if they help, and then answer the user directly."
        )
    else:
        opening = (
            f"Before you answer, {asked} advisor model(s) of the '{preset}' mixture were asked for "
            "private advice on this conversation, but none answered (see below): there is no advice "
            f"to weigh. You ({aggregator_label}) are the acting model: answer the user directly on "
            "your own judgement, using tools if they help."
        )
    lines = [
        "<moa-reference-advice>",
        opening + " Do not mention the advisors unless the user asks about them.",
    ]
    for result in results:
        header = f"\n[Advisor {result.index + 1}: {result.label}]"
        if result.status == "ok":
            lines.append(f"{header}\n{result.text.strip()}")
        else:
            lines.append(f"{header} (no advice: {result.status}{': ' + result.error if result.error else ''})")
    lines.append("</moa-reference-advice>")
    return "\n".join(lines)


def with_guidance(messages: Sequence[Message], block: str) -> tuple[Message, ...]:
    """Add the guidance block to the end of the last user turn, or as a new user turn."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].role == "user":
            original = out[i]
            content = f"{original.content}\n\n{block}" if original.content else block
            out[i] = replace(original, content=content)
            return tuple(out)
    out.append(Message("user", block))
    return tuple(out)
