"""Writes one benchmark's section of ``benchmarks/RESULTS.md`` in place.

Each benchmark owns the block between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; re-running
a benchmark replaces its block and leaves the others alone. The write is atomic.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

# ``RECAP_BENCH_RESULTS`` redirects the writes (e.g. to a scratch file on a borrowed GPU host, merged later).
RESULTS = Path(os.environ.get("RECAP_BENCH_RESULTS") or Path(__file__).resolve().parent / "RESULTS.md")
HEADER = "# Benchmark results\n\nEach section is written by the script it names; the machine is stated in each.\n"


def machine_description() -> str:
    """A one-line description of this machine and JAX backend."""
    import jax

    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return (
        f"{dev.platform.upper()} {getattr(dev, 'device_kind', '')} x{jax.device_count()}, "
        f"host {cpu} with {os.cpu_count()} cores, jax {jax.__version__}"
    )


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replaces (or appends) the section ``name`` with ``body`` (Markdown)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"<!-- BEGIN {name} -->\n## {name}\n\n_Updated {stamp}._\n\n{body.strip()}\n<!-- END {name} -->"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """Formats rows as a Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
