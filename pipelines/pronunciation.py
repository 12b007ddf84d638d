"""`pronunciation_overrides`: what the TTS reads in place of a word or phrase. Applied to the TTS input only
(`CallAgent.tts_node`), so the transcript, the chat history and the session record keep the words as written.

Rules:
- a key matches case-insensitively ("acme", "ACME" and "Acme" all match the key "Acme"); the replacement is read
  exactly as given;
- a key matches whole words only: not preceded or followed by a letter, digit or underscore ("SQL" matches in
  "SQL." and "(SQL)" but not in "MySQL" or "SQLite"); a key may hold several words, and any run of whitespace
  between them matches ("New  York" for "New York");
- where keys overlap, the longest wins ("Acme Corp" before "Acme"); a replacement is never matched again.

The LLM's text arrives in pieces (a word may be split across two), so `rewrite` holds back the last few words
until the next piece shows they cannot be the start of a longer match.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


class Pronunciation:
    def __init__(self, overrides: Mapping[str, str]) -> None:
        self._spoken = {_key(word): spoken for word, spoken in overrides.items() if word.strip()}
        keys = sorted(self._spoken, key=len, reverse=True)
        alternatives = "|".join(r"\s+".join(re.escape(part) for part in key.split()) for key in keys)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if keys else None
        # the most whitespace-separated parts a key has: that many trailing words may still grow into a match
        self._hold_words = max((len(key.split()) for key in keys), default=0)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, str]) -> Pronunciation | None:
        return cls(overrides) if overrides else None

    def apply(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._spoken[_key(m.group(0))], text)

    def _safe_cut(self, buffer: str) -> int:
        """How much of `buffer` no later text can change: everything before the last `_hold_words` words (the
        last one may be unfinished), moved back to the start of any match that would straddle the cut."""
        starts = [m.start() for m in re.finditer(r"\S+", buffer)]
        if len(starts) <= self._hold_words:
            return 0
        cut = starts[-self._hold_words]
        assert self._pattern is not None
        for match in self._pattern.finditer(buffer):
            if match.start() < cut < match.end():
                return match.start()
        return cut

    async def rewrite(self, text: AsyncIterable[str]) -> AsyncIterator[str]:
        """The TTS input stream with the overrides applied."""
        if self._pattern is None:
            async for piece in text:
                yield piece
            return
        buffer = ""
        async for piece in text:
            buffer += piece
            cut = self._safe_cut(buffer)
            if cut:
                yield self.apply(buffer[:cut])
                buffer = buffer[cut:]
        if buffer:
            yield self.apply(buffer)
