"""The first stages of ``make demo`` (demos, SFT, screening, collection) exactly as ``make demo`` runs them, and
optionally the smoke test's reduced study on top, in a process of its own so that it gets the Makefile's one host
device and XLA flags rather than the test session's eight virtual devices (the SFT train step would be a different
program, with other numerics).

    python tests/_demo_collect.py OUT_DIR [--preset PRESET] [--reduced REDUCED_DIR]

PRESET defaults to the preset the Makefile's ``demo`` target names. Writes the usual run directory
(``OUT_DIR/collect/stage.json`` holds the collection's outcome counts). With ``--reduced``, OUT_DIR is then copied
to REDUCED_DIR and the remaining stages run there under ``ci_config`` (value, labels, RECAP and BC-all for 2 steps,
evaluation on 8 episodes), reusing the reset and policy-wave programs this process compiled for the collection
(the test session's eight-device programs are different ones and would compile again). A failure of that part is
written to ``REDUCED_DIR/error.txt`` (the demo part's outcome stays testable on its own).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The later stages of the smoke test's reduced study, cut to a few steps and one evaluation wave.
CI_OVERRIDES = {
    "value_training.epochs": 1,
    "finetune.steps": 2,
    "finetune.log_every": 1,
    "finetune.holdout_fraction": 0.25,  # the label-swap diagnostic on held-out rollouts
    "evaluate.episodes": 8,
}


def demo_preset() -> str:
    """The ``--preset`` of the Makefile's ``demo`` target."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^demo:.*\n\t.*--preset\s+(\S+)", text, re.MULTILINE)
    if not m:
        raise ValueError(f"{ROOT / 'Makefile'}: no 'demo' target with a --preset")
    return m.group(1)


def ci_config(preset: str | None = None):
    """The demo preset (its demos, SFT and collection stages match the demo run's, so they are skipped) with the
    later stages cut to ``CI_OVERRIDES``."""
    from experiments import presets

    return presets.override(presets.get_preset(preset or demo_preset()), **CI_OVERRIDES)


def main() -> None:
    from experiments import collect, common, recap_bendpick, sft

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--reduced", type=Path, default=None)
    args = ap.parse_args()
    preset = args.preset or demo_preset()
    common.setup_jax()
    cfg = recap_bendpick.configure(recap_bendpick.Args(out=args.out, preset=preset))
    sft.run(cfg, args.out)
    collect.run(cfg, args.out)
    if args.reduced is None:
        return
    shutil.copytree(args.out, args.reduced)
    try:
        ci = ci_config(preset)
        common.save_config(args.reduced, ci)
        results = recap_bendpick.run_study(ci, args.reduced)
        recap_bendpick.write_outputs(ci, args.reduced, results)
    except Exception:
        (args.reduced / "error.txt").write_text(traceback.format_exc())


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
