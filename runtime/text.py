"""Text of one generated row as it grows: incremental detokenization and stop strings.

Decoding token by token breaks multi-byte characters and leading spaces, so each step decodes a
short window (`prefix_offset:`) and emits only what the window added beyond its already-read
part; a piece ending in U+FFFD (half a character) waits for the next token. Text that might be
the start of a stop string is held back until it is clear, so streamed pieces always add up to
the final text.
"""

from __future__ import annotations


class TextTracker:
    """Feeds generated ids, yields safe text pieces, detects stop strings."""

    def __init__(self, tokenizer, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.ids: list[int] = []
        self.text = ""  # decoded text so far (cut before a stop string once found)
        self.emitted = 0  # characters of `text` already handed out
        self.stopped = False
        self._prefix = 0
        self._read = 0

    def add(self, token_id: int) -> str:
        """Add one generated id; returns the new text that is safe to show (maybe '')."""
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        piece = self._decode_new()
        if piece:
            self._append(piece)
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """The row ended: release whatever was held back (a dangling half character included)."""
        if not self.stopped:
            piece = self._decode_new(final=True)
            if piece:
                self._append(piece)
        return self._release(final=True)

    def _decode_new(self, final: bool = False) -> str:
        dec = self.tokenizer.decode
        prefix_text = dec(self.ids[self._prefix:self._read])
        new_text = dec(self.ids[self._prefix:])
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text):]

    def _append(self, piece: str) -> None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._held_back()
        end = max(end, self.emitted)
        piece, self.emitted = self.text[self.emitted:end], end
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
