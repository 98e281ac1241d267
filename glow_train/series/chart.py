"""What the series pictures share (the fan chart, the backtest picture): a readable
font, text drawn word by word, and axes with ticks at round numbers. Drawn with PIL:
no plotting library needed."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["axes", "font", "legend", "round_ticks", "text"]

INK = (0, 0, 0)
GRID = (225, 225, 225)


def font(size: int = 12) -> Any:
    """PIL's own scalable font at `size` pixels, or its bitmap font where PIL was built
    without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # an old PIL, or no FreeType
        return ImageFont.load_default()


def text(draw: Any, xy: tuple[float, float], words: str, fill=INK, anchor: str = "la") -> float:
    """Draw `words` one word at a time with a measured gap between them, so that no
    font runs them together; returns the x where the text ends. `anchor`: horizontal
    `l`, `m` or `r`, then vertical `a` (top) or `m` (middle), as PIL's."""
    face = font()
    gap = max(draw.textlength("n", font=face), 4.0)
    width = sum(draw.textlength(w, font=face) for w in words.split()) + gap * (
        len(words.split()) - 1
    )
    x, y = xy
    if anchor[1] == "m":  # computed here: a bitmap font takes no anchor
        y -= draw.textbbox((0, 0), "0", font=face)[3] / 2
    if anchor[0] == "r":
        x -= width
    elif anchor[0] == "m":
        x -= width / 2
    for word in words.split():
        draw.text((x, y), word, fill=fill, font=face)
        x += draw.textlength(word, font=face) + gap
    return x - gap


def legend(draw: Any, xy: tuple[float, float], entries: list[tuple[str, tuple]]) -> None:
    """A row of coloured labels (each a short stroke of its colour, then its words)."""
    x, y = xy
    for label, colour in entries:
        draw.line([(x, y + 7), (x + 14, y + 7)], fill=colour, width=3)
        x = text(draw, (x + 18, y), label, fill=colour) + 18


def round_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """At most `most` ticks at round numbers (1, 2 or 5 times a power of ten) that lie
    within `[low, high]`."""
    if not high > low:
        return [low]
    raw = (high - low) / max(most - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    count = int(math.floor((high - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(count)]


def axes(
    draw: Any,
    box: tuple[float, float, float, float],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    x_label: str,
) -> None:
    """The frame of the plot area `box` (left, top, right, bottom in pixels) with ticks,
    light grid lines and tick labels at round numbers of `x_range` and `y_range`, and
    `x_label` under the x axis."""
    left, top, right, bottom = box
    (x0, x1), (y0, y1) = x_range, y_range

    def px(v: float) -> float:
        return left + (right - left) * (v - x0) / ((x1 - x0) or 1.0)

    def py(v: float) -> float:
        return bottom - (bottom - top) * (v - y0) / ((y1 - y0) or 1.0)

    for v in round_ticks(y0, y1):
        draw.line([(left, py(v)), (right, py(v))], fill=GRID)
        draw.line([(left - 4, py(v)), (left, py(v))], fill=INK)
        text(draw, (left - 6, py(v)), f"{v:.6g}", anchor="rm")
    for v in round_ticks(x0, x1, most=8):
        draw.line([(px(v), bottom), (px(v), bottom + 4)], fill=INK)
        text(draw, (px(v), bottom + 6), f"{v:g}", anchor="ma")
    draw.rectangle([left, top, right, bottom], outline=INK)
    text(draw, ((left + right) / 2, bottom + 22), x_label, anchor="ma")
