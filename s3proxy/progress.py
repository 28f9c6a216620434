"""Progress of long jobs (rewrap, and the migration tools to come): rate and ETA.

Pure formatting; the job decides when to print.  On a terminal a job redraws
one line (``\\r``); elsewhere it prints a plain line every few seconds.
"""

from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


def duration(seconds: float) -> str:
    s = int(max(0.0, seconds) + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * min(done, total) / total) if total > 0 else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def rate_eta(done: int, total: int | None, elapsed: float, unit: str = "objects") -> str:
    """``12.3 objects/s, ETA 1m05s`` (ETA only once ``total`` is known and something is done)."""
    if elapsed <= 0 or done <= 0:
        return f"0 {unit}/s"
    rate = done / elapsed
    text = f"{rate:.1f} {unit}/s"
    if total is not None and total >= done:
        text += f", ETA {duration((total - done) / rate)}"
    return text
