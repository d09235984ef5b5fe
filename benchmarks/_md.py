"""Replace (or add) one `## ` section of a markdown file, so a benchmark can be re-run on its own."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: Path, header: str, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(header) + r".*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: text.rstrip("\n") + "\n", old) if header in old else old.rstrip("\n") + "\n\n" + text
    path.write_text(new if new.endswith("\n") else new + "\n")


def emit(lines: list[str], header: str, append: str | None) -> None:
    """Print a section; with ``append``, also put it into that markdown file in place of its old version."""
    text = "\n".join(lines) + "\n"
    if append:
        replace_section(Path(append), header, text)
    print(text)
