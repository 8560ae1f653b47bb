"""The first stages of ``make demo`` (demos, SFT, screening, collection) exactly as ``make demo`` runs them,
in a process of its own so that it gets the Makefile's one host device and XLA flags rather than the test
session's eight virtual devices (the SFT train step would be a different program, with other numerics).

    python tests/_demo_collect.py OUT_DIR [PRESET]

PRESET defaults to the preset the Makefile's ``demo`` target names. Writes the usual run directory
(``OUT_DIR/collect/stage.json`` holds the collection's outcome counts).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def demo_preset() -> str:
    """The ``--preset`` of the Makefile's ``demo`` target."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^demo:.*\n\t.*--preset\s+(\S+)", text, re.MULTILINE)
    if not m:
        raise ValueError(f"{ROOT / 'Makefile'}: no 'demo' target with a --preset")
    return m.group(1)


def main() -> None:
    from experiments import collect, common, recap_bendpick, sft

    out = Path(sys.argv[1])
    preset = sys.argv[2] if len(sys.argv) > 2 else demo_preset()
    common.setup_jax()
    cfg = recap_bendpick.configure(recap_bendpick.Args(out=out, preset=preset))
    sft.run(cfg, out)
    collect.run(cfg, out)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
