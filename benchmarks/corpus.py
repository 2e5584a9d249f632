"""Real English paragraphs for benchmarks, taken from documentation files that the
installed packages ship (README, .md, .rst, .txt under site-packages)."""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

_WORD = re.compile(r"[A-Za-z]+")


def _looks_like_prose(paragraph: str) -> bool:
    words = paragraph.split()
    if not words:
        return False
    alpha = sum(1 for w in words if _WORD.fullmatch(w.strip(".,;:()\"'!?")))
    return alpha / len(words) > 0.75 and not paragraph.lstrip().startswith(
        ("```", ">>>", "..", "|", "#", "$", "-", "*", "=", "+"))


def _roots() -> list[Path]:
    # The environment's packages, then the interpreter's own tree, then system docs.
    candidates = [Path(sysconfig.get_paths()["purelib"]),
                  Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"]),
                  Path("/usr/share/doc")]
    return [c for c in dict.fromkeys(candidates) if c.is_dir()]


def english_paragraphs(count: int, min_words: int = 20, max_words: int = 150) -> list[str]:
    """Up to ``count`` distinct prose paragraphs, in a stable order."""
    files = [p for root in _roots()
             for p in sorted(q for ext in ("*.md", "*.rst", "*.txt") for q in root.rglob(ext))]
    seen: set[str] = set()
    out: list[str] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for block in re.split(r"\n\s*\n", text):
            paragraph = " ".join(block.split())
            n = len(paragraph.split())
            if min_words <= n <= max_words and paragraph not in seen and _looks_like_prose(
                    paragraph):
                seen.add(paragraph)
                out.append(paragraph)
                if len(out) >= count:
                    return out
    return out
