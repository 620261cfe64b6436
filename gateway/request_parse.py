"""Parse a buffered JSON body into :class:`RequestInfo`, once, with bounded work.

Only bodies the gateway already buffered (under ``retries.buffer_limit``) are read, so a
streamed upload is never held back. The JSON load is bounded in size by that limit and in
nesting by a cheap pre-count of brackets: CPython's decoder recurses per level and raises
RecursionError on a deep enough body, which here means "not an inference body", never a 500.
Anything that is not an OpenAI-style completions or chat body gives what it can (often
nothing): the request then routes as if the gateway knew nothing of it.

The prompt of a chat request is the whole conversation, flattened in order with its roles
(``"role: content\n"`` per message, text parts of multi-part content joined), so a later turn
of a conversation extends the previous turn's prompt: that is what a backend's prefix cache
reuses, and what the prefix index matches.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.affinity.blocks import block_hashes, estimate_tokens
from gateway.jsonscan import parse_json
from gateway.request_info import NO_INFO, RequestInfo

# More brackets than this and the body is not parsed: a chat of thousands of messages still
# fits, and a body of nested brackets cannot make the decoder recurse deeply.
MAX_BRACKETS = 20_000


def load_bounded(body: bytes) -> object | None:
    """The decoded JSON, or None for anything malformed, too nested, or not JSON at all
    (``gateway.jsonscan.parse_json``: the one JSON load of the request path, recursion-safe)."""
    if body.count(b"[") + body.count(b"{") > MAX_BRACKETS:
        return None
    try:
        return parse_json(body)
    except ValueError:  # TooDeep, JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def parse_request(
    body: bytes | None,
    headers: Mapping[str, str],
    session_header: str | None = None,
    with_blocks: bool = False,
) -> RequestInfo:
    """What the body (and the session header) say; ``with_blocks`` also hashes the prompt's
    blocks (only the prefix-aware policy reads them)."""
    session = headers.get(session_header) if session_header else None
    if not body or body.lstrip()[:1] != b"{":
        return RequestInfo(session=session) if session else NO_INFO
    doc = load_bounded(body)
    if not isinstance(doc, dict):
        return RequestInfo(session=session) if session else NO_INFO
    model = doc.get("model")
    model = model if isinstance(model, str) else None
    prompt, chat = _prompt_of(doc)
    if session is None:
        user = doc.get("user")
        session = user if isinstance(user, str) and user else None
    max_tokens = _int_field(doc, "max_tokens")
    if max_tokens is None:
        max_tokens = _int_field(doc, "max_completion_tokens")
    return RequestInfo(
        model=model,
        prompt=prompt,
        prompt_tokens=estimate_tokens(prompt) if prompt else 0,
        max_tokens=max_tokens,
        stream=doc.get("stream") is True,
        session=session,
        blocks=block_hashes(prompt, model) if with_blocks and prompt else (),
        chat=chat,
    )


def continued_prompt(request: RequestInfo, answer: str) -> str:
    """The prompt of the request that quotes ``answer`` after ``request``'s own prompt, as
    this module flattens it: a chat's next turn starts with the assistant message, a
    completion's continuation is the prompt and the text."""
    prompt = request.prompt or ""
    return prompt + f"assistant: {answer}\n" if request.chat else prompt + answer


def _prompt_of(doc: dict[str, object]) -> tuple[str | None, bool]:
    """Completions' ``prompt`` (a string, or the first of a list of strings), or chat
    ``messages`` flattened with their roles; and whether it is the chat form."""
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return prompt, False
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0], False
    messages = doc.get("messages")
    if not isinstance(messages, list):
        return None, False
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        parts.append(
            f"{role if isinstance(role, str) else 'user'}: {_text_of(message.get('content'))}\n"
        )
    return ("".join(parts), True) if parts else (None, False)


def _text_of(content: object) -> str:
    """A message's text: a string, or the ``text`` of each part of a multi-part content."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _int_field(doc: dict[str, object], name: str) -> int | None:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
