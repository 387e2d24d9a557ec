"""The running batch of continuous batching: rows join after their own prefill and leave when done,
without recomputing anyone else's K/V.

    batch = RunningBatch(model)
    row_state = batch.prefill(row)           # the prompt alone, batch 1 (exactly what `hoe generate` runs)
    batch.update(keep=[...], joining=[(row, row_state)])   # one K/V rebuild per membership change
    batch.step()                             # one forward pass for every row, each with its own router_mix

Layout: the cache has W columns; row r's `cached` real tokens are its last columns (left padding before),
so its attention mask row is [0] * (W - cached) + [1] * cached, and each decode step appends one column
for every row. Joining left-pads the shorter cache (hoe.runtime.kv_rows); leaving drops the rows and then
the columns no remaining row uses.
"""

from __future__ import annotations

import numpy as np
from hoe.runtime import kv_rows

from .rows import Row


class RunningBatch:
    def __init__(self, model) -> None:
        self.model = model
        self.backend = model.backend
        self.rows: list[Row] = []
        self.state = None
        self.width = 0  # K/V columns

    def __len__(self) -> int:
        return len(self.rows)

    def clear(self) -> None:
        """Drop every row and the cache."""
        self.rows, self.state, self.width = [], None, 0

    def prefill(self, row: Row):
        """Run the prompt of one new row alone; sample its first token. -> (its decode state, first piece)."""
        ids = np.asarray([row.request.prompt_ids], dtype=np.int64)  # [1, T]
        t = ids.shape[1]
        state = self.backend.new_state(1)
        logits = self.backend.step(state, ids, np.ones((1, t), dtype=np.int64),
                                   np.arange(t, dtype=np.int64)[None], row.mix[None])  # [1, V]
        row.cached = t
        return state, row.accept(logits[0])

    def update(self, keep: list[int], joining: list[tuple[Row, object]]) -> None:
        """Keep rows `keep` (indices into self.rows, in order) and append the `joining` rows with their states."""
        if len(keep) == len(self.rows) and not joining:
            return
        rows = [self.rows[i] for i in keep] + [r for r, _ in joining]
        if not rows:
            self.clear()
            return
        if not keep and len(joining) == 1:  # a lone row keeps its own prefill state: no copy
            (row, state), = joining
            self.rows, self.state, self.width = [row], state, row.cached
            return
        groups = []
        if keep:
            kv = self.backend.read_kv(self.state)
            groups.append(kv if len(keep) == len(self.rows) else kv_rows.select_rows(kv, keep))
        groups += [self.backend.read_kv(s) for _, s in joining]
        kv = kv_rows.concat_rows(groups)
        width = max(r.cached for r in rows)
        kv = kv_rows.trim_left(kv, kv[0].shape[2] - width)
        self.rows, self.state, self.width = rows, self.backend.state_from_kv(kv), width

    def step(self) -> list[str]:
        """One decode step for every row -> the text piece each row released."""
        w = self.width
        ids = np.array([[r.pending] for r in self.rows], dtype=np.int64)  # [B, 1]
        cached = np.array([r.cached for r in self.rows])
        mask = (np.arange(w + 1)[None] >= (w - cached)[:, None]).astype(np.int64)  # [B, W+1]
        positions = np.array([[r.position] for r in self.rows], dtype=np.int64)  # [B, 1]
        mix = np.stack([r.mix for r in self.rows]).astype(np.float32, copy=False)  # [B, K]
        logits = self.backend.step(self.state, ids, mask, positions, mix)  # [B, V]
        self.width += 1
        pieces = []
        for i, row in enumerate(self.rows):
            row.cached += 1
            pieces.append(row.accept(logits[i]))
        return pieces
