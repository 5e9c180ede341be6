"""metrics.jsonl writer (main process only), atomic JSON, and the throughput of a logging window."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_text
from ..models.protocol import IGNORE_INDEX


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class MetricsWriter:
    """Appends one JSON row per call. ``append=False`` starts an empty file; with
    ``keep_until_step`` (a resume) the rows after that step, written by the run that died after
    its checkpoint and about to be written again, are dropped first: one row per step and kind."""

    def __init__(self, path: str | Path | None, append: bool = False, keep_until_step: int | None = None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                self.path.write_text("")
            elif keep_until_step is not None and self.path.is_file():
                kept = [line for line in self.path.read_text().splitlines() if _row_at_most(line, keep_until_step)]
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, **row) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(_clean(row)) + "\n")


def _row_at_most(line: str, step: int) -> bool:
    """A complete row at or before ``step`` (a line cut short by a kill is dropped)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and row.get("step", 0) <= step


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically (NaN/inf become null)."""
    atomic_write_text(Path(path), json.dumps(_clean(obj), indent=2))


def target_bytes(targets, token_bytes):
    """The bytes of text that the target ids (b, l) stand for (-100: not a target), as a float64
    scalar tensor; ``token_bytes`` (vocab,) float64 is the tokenizer's bytes per id. Bits per byte
    is the summed loss in nats over ``ln 2`` times this."""
    return token_bytes[targets[targets != IGNORE_INDEX]].sum()


class Throughput:
    """Throughput of a logging window: samples and tokens over the time spent training them.
    ``pause()``/``resume()`` bracket what is not training (evaluation, cuts, checkpoints), so
    the counts and the clock always cover the same steps."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock  # seconds (the trainer's time.time)
        self.samples, self.tokens, self.seconds, self._since = 0, 0, 0.0, clock()

    def count(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens

    def pause(self) -> None:
        self.seconds += self.clock() - self._since
        self._since = None

    def resume(self) -> None:
        self._since = self.clock()

    def rates(self) -> tuple[float, float]:
        """(samples/s, tokens/s) since the last call; starts the next window."""
        if self._since is not None:
            self.pause()
            self.resume()
        dt = max(self.seconds, 1e-9)
        out = (self.samples / dt, self.tokens / dt)
        self.samples, self.tokens, self.seconds = 0, 0, 0.0
        return out
