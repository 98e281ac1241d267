"""Write the 52 Latin letters as small greyscale PNGs: an out-of-distribution set for
models of the built-in digits (white strokes on black, like them).

    python scripts/letters.py /tmp/letters        # then: glow-eval ckpt=... ood=/tmp/letters
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def write_letters(folder: Path, size: int = 16) -> list[Path]:
    """One ``size`` x ``size`` PNG per letter, the glyph centred, white on black."""
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default()
    paths = []
    for letter in string.ascii_letters:
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
        origin = ((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top)
        draw.text(origin, letter, fill=255, font=font)
        kind = "upper" if letter.isupper() else "lower"
        path = folder / f"{kind}_{letter}.png"
        image.save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=16, help="pixels per side (default 16)")
    args = parser.parse_args()
    paths = write_letters(args.folder, args.size)
    print(f"{len(paths)} letters in {args.folder}")


if __name__ == "__main__":
    main()
