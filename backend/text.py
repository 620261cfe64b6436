"""Turning a growing list of token ids into text deltas, honouring stop strings.

Text is re-decoded from all ids so multi-byte characters split across tokens come out whole;
a trailing replacement character means "wait for the next token". With stop strings, the last
``len(longest stop) - 1`` characters are held back until they can no longer begin a stop.
"""

from __future__ import annotations

from backend.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._ids: list[int] = []
        self._text = ""
        self._sent = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text now safe to send. Sets ``stopped`` on a stop string."""
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        self._text = text
        for stop in self._stops:
            at = text.find(stop, max(0, self._sent - len(stop)))
            if at >= 0:
                self.stopped = True
                self._text = text[:at]
                return self._take(len(self._text))
        return self._take(len(text) - self._hold)

    def flush(self) -> str:
        """Whatever was held back, once the request is over."""
        if not self.stopped and self._ids:
            self._text = self._tokenizer.decode(self._ids)
        return self._take(len(self._text))

    @property
    def text(self) -> str:
        return self._text

    def _take(self, end: int) -> str:
        if end <= self._sent:
            return ""
        delta = self._text[self._sent : end]
        self._sent = end
        return delta
