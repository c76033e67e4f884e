"""Images in a conversation: who can see them, what the others get instead, what they cost.

A provider declares which of its models can see (`vision`, `vision_models`). Before a call the
engine shapes the messages for that model with `for_model`: a model that can see keeps the
images whose bytes are at hand; every other image becomes a short text stand-in, so no model is
sent a part it would reject and none is left guessing that something was there.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import replace

from moa_core.settings import ProviderSettings
from moa_core.values import ImagePart, Message

NOT_VISIBLE = "not visible to you"
EARLIER = "shown in an earlier turn, not kept"
# Without dimensions we assume a large image: providers scale images down to about this many
# tokens at most (Anthropic documents ~1,600), so the estimate errs high rather than low.
_MAX_IMAGE_TOKENS = 1600


def can_see(provider: ProviderSettings, model: str) -> bool:
    return provider.vision or model in provider.vision_models


def has_visible_images(messages: Sequence[Message]) -> bool:
    """Whether any image with its bytes at hand is in `messages`."""
    return any(image.data for m in messages for image in m.images)


def for_model(messages: Sequence[Message], sees: bool) -> tuple[Message, ...]:
    """Messages as one model gets them: images it can be sent stay, the rest become text."""
    out: list[Message] = []
    for message in messages:
        if not message.images:
            out.append(message)
            continue
        kept = tuple(image for image in message.images if sees and image.data)
        stand_ins = [
            image.stand_in(NOT_VISIBLE if image.data else EARLIER)
            for image in message.images
            if not (sees and image.data)
        ]
        content = "\n".join(p for p in (message.content, *stand_ins) if p)
        out.append(replace(message, content=content, images=kept))
    return tuple(out)


def data_url(image: ImagePart) -> str:
    return f"data:{image.media_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def estimated_tokens(image: ImagePart) -> int:
    """Input tokens of one image when the server reports none (labelled estimated by the caller):
    width×height/750, Anthropic's published rule, capped where providers downscale."""
    if image.width and image.height:
        return min(_MAX_IMAGE_TOKENS, math.ceil(image.width * image.height / 750))
    return _MAX_IMAGE_TOKENS
