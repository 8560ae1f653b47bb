"""Named, frozen configurations of the RECAP-Ψ BendPick study.

The presets, one per scale:

* ``smoke`` — every stage for real on a 2-core CPU in at most ~10 minutes (tiny models, a few
  batched episodes, a short episode limit), with no headroom (its policy never succeeds). Default of
  ``python -m experiments.recap_bendpick``; the tests' reduced study is the ``demo`` preset cut further.
* ``demo`` — what ``make demo`` runs: the ``cpu`` recipe, which has headroom, with few episodes per
  stage, in at most 10 minutes from an empty compilation cache on a 2-core CPU.
* ``cpu``   — smoke's shapes, trained long enough for headroom (DART demos, the episode clock, SFT
  screened for the 25-60% band) on a 2-core CPU in about 20 minutes.
* ``cpu_long`` — the ``cpu`` preset with 128 rollouts and 192 paired evaluation episodes per
  condition, so that a ~10-point difference is resolvable on a 2-core CPU (about an hour).
* ``cpu_power`` — the ``cpu`` recipe with the power to answer the question on a 2-core CPU: 384
  rollouts, a state-and-clock value function, 512 paired evaluation episodes for each compared condition,
  in at most ~100 minutes per seed (run two seeds with ``experiments.seeds``).
* ``cpu_power_mixed`` — ``cpu_power`` on mixed-quality rollouts: every other rollout samples its chunks at
  temperature 1.5 (exploration noise), fine-tuned at lr 2e-3: data in which the advantage token has something
  to read.
* ``gpu``   — the ``cpu_power`` recipe with 512 rollouts and 1024 paired evaluation episodes per compared
  condition, the whole study in one ~9-minute device call on one H100/H200 (sized for the 15
  device-minutes a session gets).
* ``paper`` — the paper's settings (RECAP-Ψ, Sec. 3-4 and App. B): 100 demos, SFT 20k/40k steps,
  500 rollouts from SFT@20k (T = 600), value function 50 epochs, RECAP and BC-all 40k steps at
  batch 128, 500 evaluation episodes per condition.

Model sizes are given as overrides of the stage configs (``policy``/``value`` tuples of
``(field, value)`` pairs applied with ``dataclasses.replace``), so this file names the scale of a
study without copying the stages' own defaults. ``get_preset`` answers a mistyped name with the
closest registered one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

Overrides = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class EnvSettings:
    """Environment overrides passed to ``envs.make("G1BendPick-v0", ...)``."""

    episode_length: int = 600  # control steps at 50 Hz (the paper's T = 600)
    image_size: tuple[int, int] = (192, 320)  # (H, W): Ψ0's 180×320 rounded up to 32 px (60 visual tokens)
    randomization_level: int = 1
    replan_every: int = 24  # Ta: executed actions per chunk before re-querying
    # MuJoCo solver and damping, "solver:iterations:ls_iterations[:eulerdamp|:noeulerdamp]"
    # (envs.g1.bendpick.parse_physics), e.g. "newton:4:8:noeulerdamp"; "" = the env's default physics.
    physics: str = ""


@dataclass(frozen=True)
class DemoSettings:
    """Expert demonstrations for SFT (scripted expert, optionally noised for mixed quality)."""

    num_demos: int = 100
    num_envs: int = 100
    expert_noise: float = 0.0  # the expert's noise knob; > 0 lowers demo quality (headroom)
    successful_only: bool = True  # the paper's SFT set is 100 all-successful demos
    # DART-style coverage: the noised expert (expert_noise) drives, the clean expert's chunk from the same
    # observation is recorded as the action label (envs.g1.expert.dart_act). False: the noised actions are
    # recorded (mixed-quality demos).
    dart: bool = False


@dataclass(frozen=True)
class SFTSettings:
    """Flow-matching SFT on expert demos (Ψ0 fine-tuning recipe)."""

    steps: int = 40_000  # SFT@40k: the `sft_final` condition
    init_step: int = 20_000  # SFT@20k: the collection checkpoint, the `sft_init` condition
    candidate_steps: tuple[int, ...] = ()  # extra checkpoints screened for headroom (empty: use init_step)
    batch_size: int = 128
    learning_rate: float = 1e-4
    warmup_steps: int = 1_000
    weight_decay: float = 1e-6
    grad_clip: float = 1.0
    log_every: int = 100
    # Norm-stat range widening (policy.MIN_SPAN / STATE_MIN_SPAN around the midpoint): a deviation from
    # Ψ0's plain min–max for few demos; off by default (Ψ0), on in the small CPU presets.
    norm_widen: bool = False


@dataclass(frozen=True)
class CollectSettings:
    """On-policy rollouts from the collection checkpoint."""

    episodes: int = 500
    num_envs: int = 100
    target_rate: tuple[float, float] = (0.25, 0.60)  # headroom band for the collection checkpoint
    screen_episodes: int = 0  # episodes per candidate checkpoint when screening (0: no screening)
    # Sampling temperatures of the collection policy (``policy.sample_actions``' noise_scale, every chunk of an
    # episode): episode i plays at temperatures[i % len]. (1.0,) is the trained sampler (the paper's on-policy
    # rollouts); more than one gives mixed-quality data. Left out of stage markers at its default.
    temperatures: tuple[float, ...] = field(default=(1.0,), metadata={"marker": "omit_default"})


@dataclass(frozen=True)
class ValueSettings:
    """Distributional value function (201 bins), App. B, and the study's one return definition.

    The return definition (``returns``, ``c_fail``, ``return_horizon``) is read by both the value stage and
    the label stage (``experiments.glue.return_definition``), so the two can never disagree; the value bins
    cover its range (``recap_jax.labeling.return_range``).
    """

    epochs: int = 50
    batch_size: int = 256
    learning_rate: float = 3e-4
    val_fraction: float = 0.1  # episode-level split, stratified by outcome (folds <= 1)
    split_seed: int = 42
    returns: str = "eq1"  # "eq1" (the paper's Eq. 1) or "steps" (pi*0.6 step rewards with c_fail)
    c_fail: float = 0.0
    # T of the returns' normaliser T - 1: the paper's 600 (599) whatever the episode limit, so a short episode
    # limit does not shrink the success/failure gap of the return (issue 22).
    return_horizon: int = 600
    # The value function also reads the episode clock (the decision point's control step); a deviation
    # from the paper, recorded in provenance.deviations.
    clock: bool = False
    # >= 2: k-fold, V-hat for the labels out of fold and early stopping on the pooled held-out MSE of the
    # other folds (value_training.cross_fit); 0: the paper's one 90/10 split (labels from the same model).
    folds: int = 0
    min_steps: int = 0  # at least this many Adam steps per model (epochs grow to reach it)

    def __post_init__(self) -> None:
        if self.returns not in ("eq1", "steps"):
            raise ValueError(f"value_training.returns must be 'eq1' or 'steps', got {self.returns!r}")
        if self.c_fail < 0 or self.return_horizon < 2 or self.folds < 0 or self.min_steps < 0 or self.folds == 1:
            raise ValueError(
                "value_training needs c_fail >= 0, return_horizon >= 2, min_steps >= 0 and folds 0 or >= 2, got "
                f"{self.c_fail}, {self.return_horizon}, {self.min_steps}, {self.folds}"
            )


@dataclass(frozen=True)
class LabelSettings:
    """Advantage labels: A = r - V̂ (or N-step), top `positive_fraction` labelled high."""

    positive_fraction: float = 0.3  # global 70th-percentile threshold (Eq. 3)
    n_step: int | None = None  # None: full Monte-Carlo return minus V̂ (the paper's choice)


@dataclass(frozen=True)
class FinetuneSettings:
    """RECAP (advantage token in the prompt) and BC-all (no token): same steps, optimiser, data."""

    steps: int = 40_000
    batch_size: int = 128
    learning_rate: float = 1e-4
    warmup_steps: int = 1_000
    weight_decay: float = 1e-6
    grad_clip: float = 1.0
    indicator_dropout: float = 0.0  # π*0.6 drops the token 30% of the time; needed for CFG
    init: str = "sft_init"  # "sft_init" (the paper's base stand-in) or "scratch"
    log_every: int = 100
    # > 0: this fraction of the rollouts (episode level, stratified by outcome) is held out of both RECAP's and
    # BC-all's training, so the label-swap diagnostic reads the token on episodes the policy never saw
    # (finetune.label_swap_loss, issue 22). 0: the paper's recipe (every rollout trains; in-sample diagnostic).
    holdout_fraction: float = 0.0
    # Replicates of the fine-tuning runs: k > 0 trains RECAP and BC-all with window order and flow noise from seed
    # ``seed + 7919 k`` instead of the study seed (the data, holdout and diagnostic windows stay the study's), to
    # measure how much a comparison of two training runs moves from training noise alone.
    train_seed: int = field(default=0, metadata={"marker": "omit_default"})


@dataclass(frozen=True)
class EvalSettings:
    """Closed-loop evaluation on held-out reset keys (the same keys for every condition)."""

    episodes: int = 500
    # Episodes of the two SFT conditions (sft_init, sft_final); 0: ``episodes``. They enter no comparison
    # (report.COMPARISONS pairs RECAP-high with RECAP-low and BC-all), so a power study may give them fewer.
    sft_episodes: int = 0
    num_envs: int = 100
    key_seed: int = 10_000  # evaluation keys use key_seed + seed (glue.key_space): held out, per seed
    cfg_beta: float | None = None  # classifier-free guidance at evaluation (needs indicator dropout)
    gif_episodes: int = 2  # high and low episodes each in the GIF

    def condition_episodes(self, condition: str) -> int:
        """Evaluation episodes of ``condition`` (the SFT conditions may have fewer: ``sft_episodes``)."""
        return self.sft_episodes if (condition.startswith("sft_") and self.sft_episodes) else self.episodes


@dataclass(frozen=True)
class StudyConfig:
    """One whole RECAP-Ψ study: SFT → collect → value → labels → RECAP/BC-all → evaluation."""

    name: str
    description: str
    seed: int = 0
    iterations: int = 1  # > 1: the π*0.6 loop (collect with the latest policy, retrain value and policy)
    env: EnvSettings = field(default_factory=EnvSettings)
    # Fields of recap_jax.policy.PolicyConfig (image size and Ta come from `env`). Every preset must name
    # ``loss_reduction``, the flow-matching loss its SFT/RECAP/BC-all training uses ("mean" or Ψ0's "psi0",
    # docs/STUDY.md); ``rtc`` (default "psi0") is also what the study's rollouts use.
    policy: Overrides = ()
    value: Overrides = ()  # fields of recap_jax.value_training.ValueTrainConfig (epochs etc. from `value_training`)
    demos: DemoSettings = field(default_factory=DemoSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    collect: CollectSettings = field(default_factory=CollectSettings)
    value_training: ValueSettings = field(default_factory=ValueSettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    evaluate: EvalSettings = field(default_factory=EvalSettings)
    budget: str = ""  # the arithmetic behind the preset's time budget

    def __post_init__(self) -> None:
        if not 0 < self.sft.init_step <= self.sft.steps:
            raise ValueError(f"sft.init_step={self.sft.init_step} must be in (0, sft.steps={self.sft.steps}]")
        if self.evaluate.cfg_beta is not None and self.finetune.indicator_dropout <= 0.0:
            raise ValueError("evaluate.cfg_beta needs finetune.indicator_dropout > 0 (an unconditional policy)")
        if not 0.0 <= self.finetune.holdout_fraction < 0.5:
            raise ValueError(f"finetune.holdout_fraction must be in [0, 0.5), got {self.finetune.holdout_fraction}")
        if self.finetune.init not in ("sft_init", "scratch"):
            raise ValueError(f"finetune.init must be 'sft_init' or 'scratch', got {self.finetune.init!r}")
        if not 0.0 < self.labels.positive_fraction < 1.0:
            raise ValueError(f"labels.positive_fraction must be in (0, 1), got {self.labels.positive_fraction}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        temps = self.collect.temperatures
        if not temps or not all(isinstance(t, int | float) and t > 0 for t in temps):
            raise ValueError(f"collect.temperatures must be a non-empty tuple of positive numbers, got {temps!r}")
        if dict(self.policy).get("loss_reduction") not in ("mean", "psi0"):
            raise ValueError(
                "policy overrides must name the training loss: ('loss_reduction', 'mean' | 'psi0'), got "
                f"{dict(self.policy).get('loss_reduction')!r}"
            )
        if self.demos.dart and self.demos.expert_noise <= 0.0:
            raise ValueError("demos.dart needs demos.expert_noise > 0 (the noise that drives the robot off-path)")
        if self.env.physics:
            from envs.g1.bendpick import parse_physics

            parse_physics(self.env.physics)  # ValueError naming the problem

    def env_steps(self) -> dict[str, int]:
        """Upper bound on control steps simulated per stage (episodes × episode limit)."""
        t = self.env.episode_length
        screens = len(self.sft.candidate_steps) * self.collect.screen_episodes
        return {
            "demos": self.demos.num_demos * t,
            "collect": self.iterations * (self.collect.episodes + screens) * t,
            "evaluate": (
                self.iterations * 3 * self.evaluate.episodes + 2 * self.evaluate.condition_episodes("sft_init")
            )
            * t,
        }

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def override(cfg: StudyConfig, **changes: Any) -> StudyConfig:
    """Returns ``cfg`` with dotted fields replaced, e.g. ``override(cfg, **{"sft.steps": 10})``.

    All changes are applied in one ``replace`` so that validation sees the final config.
    """
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, sub in nested.items():
        top[head] = dataclasses.replace(top.get(head, getattr(cfg, head)), **sub)
    return dataclasses.replace(cfg, **top)


# ---- smoke: every stage for real on a 2-core CPU in <= ~10 minutes --------------------------------
# Budget arithmetic (2 CPU cores):
#   envs: 8 batched envs, episode limit 216 control steps (9 queries of Ta = 24; the scripted expert
#   lifts the box at ~150-190 steps). Waves of 8 envs x 216 steps: demos 1 + collect 2 + evaluate 5
#   conditions x 1 = 8 waves = 13.8k env-steps (x10 physics substeps).
#   training: SFT 120 + RECAP 60 + BC-all 60 steps at batch 16 (tiny expert + tiny encoder, 0.38 M params);
#   value: 5 epochs over ~16 episodes x 9 decision points.
#   compiled programs (persistent-cached, so a second run only loads them): the env reset (shared by
#   both waves), the expert wave, the policy wave (one program: params, prompts and β are traced, so
#   collection and all 5 conditions share it), the policy train steps, the value epoch/eval/predict.
#   Measured (results/smoke/README.md, shared 2-core CPU): 234 s with a warm cache; 778-1053 s cold when
#   each wave also compiled the reset (~4-6 min each under load); with the reset split out (2026-11-23)
#   a cold run (empty cache) took 384 s at load average 2-6.
#   Demos are DART-style (noise 0.3 drives, the clean expert labels; ~85% succeed, so 2 waves find 8
#   successes) and the policy reads the episode clock: the same programs as the `cpu` preset, which
#   trains long enough for headroom.
SMOKE = StudyConfig(
    name="smoke",
    description="2-core CPU, <= 10 min with a warm compilation cache: tiny models, few episodes, every stage for real",
    seed=0,
    env=EnvSettings(episode_length=216, image_size=(48, 80), randomization_level=0, replan_every=24),
    policy=(("action_expert", "tiny"), ("encoder", "tiny"), ("phase_steps", 216), ("loss_reduction", "mean")),
    value=(("backbone", "cnn"), ("cnn_channels", (8, 16))),
    demos=DemoSettings(num_demos=8, num_envs=8, expert_noise=0.3, dart=True),
    sft=SFTSettings(
        steps=120, init_step=60, batch_size=16, learning_rate=3e-4, warmup_steps=10, log_every=20, norm_widen=True
    ),
    collect=CollectSettings(episodes=16, num_envs=8),
    # The value function reads the episode clock and labels with out-of-fold V̂ (issue 22).
    value_training=ValueSettings(epochs=5, batch_size=64, clock=True, folds=4),
    labels=LabelSettings(positive_fraction=0.3),
    finetune=FinetuneSettings(steps=60, batch_size=16, learning_rate=3e-4, warmup_steps=5, log_every=20),
    evaluate=EvalSettings(episodes=8, num_envs=8, gif_episodes=2),
    budget=(
        "8 envs x 216 control steps: 9 waves (demos 2, collect 2, evaluate 5) = 15.6k env-steps; "
        "train steps: SFT 120 + RECAP 60 + BC-all 60 at batch 16; value 5 epochs; "
        "~6 compiled programs (env reset, expert wave, policy wave shared by collection and all conditions, "
        "policy train step, value train/eval), persistent-cached"
    ),
)

# ---- demo: what `make demo` runs: the `cpu` recipe cut to <= 10 minutes cold on a 2-core CPU ----------
# The `smoke` preset shows that every stage runs, but its 120-step SFT policy never succeeds, so its Table 1
# is all zeros (issue #24). This preset keeps the recipe that has headroom (the `cpu` preset: DART demos,
# the episode clock, SFT 3000 steps at lr 2e-3, screened for the 25-60% band) and cuts everything else:
# screening on one wave per candidate, 32 rollouts, RECAP and BC-all 100 steps, 8 paired evaluation
# episodes per condition (too few for any comparison to separate: cpu_long and gpu answer the question).
# Its fixed seed collects both outcomes (15/32); tests/test_experiments_smoke.py fails if that ever stops
# holding. Fine-tuning runs at the paper's lr 1e-4: at 3e-4 (the cpu presets') the 100-step RECAP and BC-all
# policies fell in 4-8 of 8 evaluation episodes (0/8, 0/8, 1/8 successes: degenerate comparisons), and 300
# steps at 1e-4 were worse (0/8 each, 6 falls): fine-tuning on the SFT policy's own 32 rollouts (6 of which
# fell) drifts the policy further the longer it runs. 100 steps at 1e-4 scored 3/8 (BC-all), 1/8, 1/8 (2026-12-04).
# Budget (2-core CPU; shapes and compiled programs as smoke's): 8-env x 216-step waves: demos ~5,
# screening 3, collection 4, evaluation 5 x 1 = ~17 waves; SFT 3000 + RECAP 100 + BC-all 100 train steps
# at batch 16 (~73 ms CPU each); value 10 epochs. Compile: reset, expert wave, policy wave, two train
# steps (SFT and fine-tuning schedules), value programs. Measured: see results/demo/README.md.
DEMO = StudyConfig(
    name="demo",
    description="make demo: 2-core CPU, <= 10 min cold: the cpu recipe (headroom) with few episodes per stage",
    seed=1,
    env=SMOKE.env,
    policy=SMOKE.policy,
    value=SMOKE.value,
    demos=DemoSettings(num_demos=32, num_envs=8, expert_noise=0.3, dart=True),
    sft=SFTSettings(
        steps=3_000,
        init_step=2_000,
        candidate_steps=(2_000, 2_500, 3_000),
        batch_size=16,
        learning_rate=2e-3,
        warmup_steps=50,
        log_every=100,
        norm_widen=True,
    ),
    collect=CollectSettings(episodes=32, num_envs=8, screen_episodes=8),
    value_training=ValueSettings(epochs=10, batch_size=64, clock=True, folds=4),  # as cpu: clock + out-of-fold labels
    labels=LabelSettings(positive_fraction=0.3),
    finetune=FinetuneSettings(steps=100, batch_size=16, learning_rate=1e-4, warmup_steps=10, log_every=50),
    evaluate=EvalSettings(episodes=8, num_envs=8, gif_episodes=2),
    budget=(
        "8 envs x 216 control steps: ~17 waves (demos ~5, screening 3, collect 4, evaluate 5 x 1); "
        "SFT 3000 + RECAP 100 + BC-all 100 steps at batch 16; value 10 epochs; smoke's compiled programs"
    ),
)

# ---- cpu: the smoke shapes, trained long enough for headroom, on a 2-core CPU in ~20 minutes -------------
# Measured on CPU (runs/dart, 2026-11-23; tiny policy, 32 demos, lr 2e-3, batch 16, 16 held-out episodes):
# clean demos + no clock: 0/8 after 2.4k steps (the hand closes early, then the policy is lost off-path);
# clean demos + clock: 0/16 after 4k steps (open-loop fit better than the time-indexed mean chunk, but
# closed-loop states leave the demos' path); DART demos (noise 0.3) without the clock: 0/16 after 2k
# steps, 10/16 after 4k; DART + clock: 4/16 after 2k and 14/16 after 4k. Screening SFT@1000-3000
# picks the checkpoint in the 25-60% band.
# Budget: waves of 8 envs x 216 steps: demos ~5, screening 4 x 1, collection 4, evaluation 5 x 4 = ~33
# waves (~15 s each warm); SFT 3000 + RECAP 500 + BC-all 500 steps at batch 16 (~12 steps/s); value 10
# epochs. Same compiled programs as `smoke` (shapes and policies are identical).
CPU = StudyConfig(
    name="cpu",
    description="2-core CPU, ~20 min: smoke's shapes with DART demos, the episode clock and enough SFT for headroom",
    seed=0,
    env=SMOKE.env,
    policy=SMOKE.policy,
    value=SMOKE.value,
    demos=DemoSettings(num_demos=32, num_envs=8, expert_noise=0.3, dart=True),
    sft=SFTSettings(
        steps=3_000,
        init_step=2_000,
        candidate_steps=(1_000, 1_500, 2_500, 3_000),
        batch_size=16,
        learning_rate=2e-3,
        warmup_steps=50,
        log_every=100,
        norm_widen=True,
    ),
    collect=CollectSettings(episodes=32, num_envs=8, screen_episodes=8),
    # 40 epochs per fold: on 32 and 192 noised-expert episodes the CNN's pooled held-out MSE was lowest at epoch 11
    # and 16 (benchmarks RESULTS value_credit); a 600-step floor cost 278 s of the loaded 2-core CPU for nothing.
    value_training=ValueSettings(epochs=40, batch_size=64, clock=True, folds=4),
    labels=LabelSettings(positive_fraction=0.3),
    finetune=FinetuneSettings(steps=500, batch_size=16, learning_rate=3e-4, warmup_steps=20, log_every=50),
    evaluate=EvalSettings(episodes=32, num_envs=8, gif_episodes=2),
    budget=(
        "8 envs x 216 control steps: ~33 waves (demos ~5, screening 5, collect 4, evaluate 5 x 4); "
        "SFT 3000 + RECAP 500 + BC-all 500 steps at batch 16; value 4 folds x 40 epochs; smoke's compiled programs"
    ),
)

# ---- cpu_long: the cpu preset at a size where a difference of ~10 points is resolvable -------------------
# The `cpu` run (results/cpu) had headroom but 32 episodes per condition: a difference's 95% CI was
# about +-23 points, wider than the paper's effects (+9.3, +12.6). This preset keeps cpu's env, policy,
# demos and SFT (so its compiled programs and its SFT screen are the same) and grows what decides the
# comparison: 128 rollouts (the value function's held-out split gets ~13 episodes), 1500 fine-tuning
# steps, and 192 paired evaluation episodes per condition (diff CI about +-9.5 points at p ~ 0.35).
# Budget (8-env waves of 216 steps, ~17 s warm on 2 idle cores): demos ~5, screening 5 x 2, collection
# 16, evaluation 5 x 24 = ~151 waves (~43 min); SFT 3000 (~3.6 min) + RECAP 1500 + BC-all 1500 steps
# (~2 min each) at batch 16; value 20 epochs. About 55 min on an idle 2-core CPU, plus compilation.
CPU_LONG = StudyConfig(
    name="cpu_long",
    description="2-core CPU, ~1 h: the cpu preset with 128 rollouts and 192 paired evaluation episodes per condition",
    seed=0,
    env=CPU.env,
    policy=CPU.policy,
    value=CPU.value,
    demos=CPU.demos,
    sft=CPU.sft,
    collect=CollectSettings(episodes=128, num_envs=8, screen_episodes=16),
    value_training=ValueSettings(epochs=40, batch_size=64, clock=True, folds=4),
    labels=LabelSettings(positive_fraction=0.3),
    finetune=FinetuneSettings(steps=1_500, batch_size=16, learning_rate=3e-4, warmup_steps=50, log_every=100),
    evaluate=EvalSettings(episodes=192, num_envs=8, gif_episodes=2),
    budget=(
        "8 envs x 216 control steps: ~151 waves (demos ~5, screening 5 x 2, collect 16, evaluate 5 x 24); "
        "SFT 3000 + RECAP 1500 + BC-all 1500 steps at batch 16; value 4 folds x 40 epochs; "
        "smoke's compiled programs"
    ),
)

# ---- cpu_power: the cpu recipe with the power to answer whether the token helps (issue 23) -----------------
# The paper's effect (30.8% vs 21.5%) needs ~170-270 paired episodes per condition for 80% power; cpu_long had
# 192 (55%), cpu 32 (13%). This preset keeps cpu's env, policy, demos and SFT screen and grows the rest:
# 384 rollouts from the screened collection checkpoint; a state-and-clock value function (benchmarks RESULTS
# value_credit: on 192 noised-expert episodes it beat the clock-only baseline, MSE 0.77x, within-bin AUC 0.73,
# in 7 s, where the end-to-end CNN overfit the 48x80 images in 431 s and did not); RECAP and BC-all 3000 steps
# (~14 epochs of the ~3.1k training windows) with 10% of the rollouts held out of both, so the label-swap
# diagnostic reads the token on unseen episodes; 512 paired evaluation episodes for RECAP-high, RECAP-low and
# BC-all, 128 for the two SFT conditions (context only). Waves of 32 envs (benchmarks RESULTS eval_waves).
# Budget (2 idle cores): see `budget`; two seeds: `python -m experiments.seeds --preset cpu_power --seeds 0 1`.
CPU_POWER = StudyConfig(
    name="cpu_power",
    description="2-core CPU, <= 100 min per seed: cpu's recipe, 384 rollouts, 512 paired eval episodes per condition",
    seed=0,
    env=CPU.env,
    policy=CPU.policy,
    value=(("backbone", "state"),),
    demos=CPU.demos,
    sft=CPU.sft,
    collect=CollectSettings(episodes=384, num_envs=32, screen_episodes=32),
    value_training=ValueSettings(epochs=40, batch_size=64, clock=True, folds=4, min_steps=1_000),
    labels=LabelSettings(positive_fraction=0.3),
    finetune=FinetuneSettings(
        steps=3_000, batch_size=16, learning_rate=3e-4, warmup_steps=100, log_every=100, holdout_fraction=0.1
    ),
    evaluate=EvalSettings(episodes=512, sft_episodes=128, num_envs=32, gif_episodes=2),
    budget=(
        "32 envs x 216 control steps: demos ~5 waves of 8, screening 4 x 1, collection 12, evaluation 3 x 16 + "
        "2 x 4 = ~76 waves of 32; SFT 3000 + RECAP 3000 + BC-all 3000 steps at batch 16; value: state-and-clock "
        "net, 4 folds x >= 1000 steps"
    ),
)

# ---- cpu_power_mixed: cpu_power on mixed-quality rollouts (issue 23) ----------------------------------------
# On cpu_power's on-policy rollouts the token is not learned, at lr 3e-4 or 2e-3: with common random numbers only
# the first chunk flips an outcome, and successful and failed chunks differ by 1/60 of what the token can read
# (benchmarks RESULTS branch_credit, token_learnability). This preset asks whether it is learned, and whether it
# helps, when the rollouts' quality varies with something the actions show: every other rollout samples all its
# chunks at temperature 1.5 (the flow noise scaled by 1.5, as exploration noise would; from seed 0's SFT@3000,
# 48% success at 1.0, 14% at 1.2, 5% at 1.5: RESULTS temperature_sweep) and fine-tuning runs at the recipe's SFT
# learning rate, 2e-3, where labels that mark the temperature-1.5 windows open the label-swap gap (RESULTS
# token_learnability_mixed). Everything else, the evaluation at temperature 1 included, is cpu_power's, so a run
# can reuse cpu_power's demos/ and sft/ stages. Result (seed 0, results/cpu_power_mixed): the token is learned
# and does not help; every fine-tuned policy inherits the mixture's width and falls.
CPU_POWER_MIXED = dataclasses.replace(
    CPU_POWER,
    name="cpu_power_mixed",
    description="cpu_power on mixed-quality rollouts: every other one sampled at temperature 1.5; fine-tuning lr 2e-3",
    collect=dataclasses.replace(CPU_POWER.collect, temperatures=(1.0, 1.5)),
    finetune=dataclasses.replace(CPU_POWER.finetune, learning_rate=2e-3),
    budget=CPU_POWER.budget + "; rollouts alternate temperatures 1.0 and 1.5 (one program)",
)

# ---- gpu: the cpu_power recipe at 1024 paired episodes per condition, in one ~9-minute device call ----------
# Design. The first H100 run (results/gpu_h100_2026-11-23, preset at commit 0305770: small 43 M policy, clean
# demos, 96x160 camera, level-1 randomisation, 400-step episodes) had no headroom (SFT 1.6-3.1%). The recipe that has
# headroom is the `cpu` one (DART demos, the episode clock, the tiny policy at lr 2e-3, SFT screened at
# 1k-3k: 37.5-53% on CPU). This preset runs the `cpu_power` recipe (cpu's env, policy, demos and SFT; the
# state-and-clock value function; 10% of the rollouts held out of fine-tuning for the label-swap diagnostic)
# and scales what decides the comparison (issue 23): 512 rollouts and 1024 paired evaluation episodes for each
# compared condition (a difference's 95% CI about +-4 points), 512 for the SFT conditions.
# Budget (one H100/H200; device sessions get 15 device-minutes in all, so the study must fit one 10-minute
# call with room to resume): every wave has 512 envs, so the env reset, the expert wave and the policy wave
# compile once each (~1-2 min each cold on the H100; the device starts with an empty cache). 512-env x
# 216-step waves: demos 1, screening 5, collection 1, evaluation 3 x 2 + 2 = 15 waves of 1.1 M physics steps
# (~10 s each at the ~108K physics steps/s measured with policy and camera); SFT 3000 + RECAP 4000 + BC-all
# 4000 steps of the tiny policy at batch 16 (a few ms each); value 4 folds x >= 2400 steps of the small
# state net. About 4 min of compilation + 4 min of work: ~8-9 min.
# Measured on one H200 (2026-12-04, results/gpu): 487 s of stages from an empty cache, 287 s of it compiling.
GPU = dataclasses.replace(
    CPU_POWER,
    name="gpu",
    description="one H100/H200, ~9 min in one device call: cpu_power's recipe, 512 rollouts, 1024 paired eval episodes",
    demos=dataclasses.replace(CPU_POWER.demos, num_envs=512),
    collect=CollectSettings(episodes=512, num_envs=512, screen_episodes=512),
    value_training=dataclasses.replace(CPU_POWER.value_training, epochs=30, min_steps=2_400),
    finetune=dataclasses.replace(CPU_POWER.finetune, steps=4_000, log_every=250),
    evaluate=EvalSettings(episodes=1024, sft_episodes=512, num_envs=512, gif_episodes=2),
    budget=(
        "512 envs x 216 control steps: 15 waves (demos 1, screening 5, collect 1, evaluate 3 x 2 + 2), one reset, "
        "one expert-wave and one policy-wave program; SFT 3000 + RECAP 4000 + BC-all 4000 steps at batch 16 (tiny "
        "policy); value 4 folds x >= 2400 steps; ~4 min compile + ~4 min work on one H100"
    ),
)

# ---- paper: RECAP-Ψ's settings ---------------------------------------------------------------------
PAPER = StudyConfig(
    name="paper",
    description="the paper's settings (RECAP-Ψ Sec. 3-4, App. B); needs Ψ0-scale compute",
    seed=0,
    env=EnvSettings(episode_length=600, image_size=(192, 320), randomization_level=1, replan_every=24),
    # Ψ0's action expert (width 1536, 6 blocks, 24 heads) on a 2048-d context, bf16 compute.
    # Ψ0's own fine-tuning loss (summed over the chunk's steps; flow.flow_matching_loss "psi0").
    policy=(("action_expert", "psi0"), ("encoder", "base"), ("dtype", "bfloat16"), ("loss_reduction", "psi0")),
    # The paper's frozen ImageNet ResNet-50 needs weights that cannot be fetched here; the policy's frozen
    # System-2 encoder stands in for it (recorded in results.json provenance).
    value=(("backbone", "system2"),),
    demos=DemoSettings(num_demos=100, num_envs=100),
    sft=SFTSettings(steps=40_000, init_step=20_000, batch_size=128, learning_rate=1e-4, warmup_steps=1_000),
    collect=CollectSettings(episodes=500, num_envs=100),
    value_training=ValueSettings(epochs=50, batch_size=256, learning_rate=3e-4, val_fraction=0.1, split_seed=42),
    labels=LabelSettings(positive_fraction=0.3, n_step=None),
    finetune=FinetuneSettings(steps=40_000, batch_size=128, learning_rate=1e-4, warmup_steps=1_000),
    evaluate=EvalSettings(episodes=500, num_envs=100, gif_episodes=3),
    budget="paper scale: SFT 40k + RECAP 40k + BC-all 40k steps at batch 128; 500 + 5x500 episodes of 600 steps",
)

# ---- psi0: the paper's study with the whole Ψ0 (frozen Qwen3-VL-2B System-2 + Ψ0's 490M expert) ------
# Needs the Qwen3-VL-2B-Instruct directory (tokenizer + weights) as policy.vlm_path, e.g.
# override(PSI0, policy=PSI0.policy + (("vlm_path", "/ckpt/Qwen3-VL-2B-Instruct"),)). The expert trains
# from the frozen VLM's cached features (recap_jax.data.features; one VLM pass per stored image and
# prompt variant); memory: benchmarks/RESULTS.md § psi0_memory. The tiny variant (qwen3vl-tiny + tiny)
# is exercised on CPU in tests/test_psi0_policy.py.
PSI0 = dataclasses.replace(
    PAPER,
    name="psi0",
    description="the paper's study with the whole Ψ0 as policy: frozen Qwen3-VL-2B + Ψ0's expert (GPU scale)",
    env=dataclasses.replace(PAPER.env, image_size=(180, 320)),  # Ψ0's view (→ 192×320 → 77 visual tokens)
    policy=(
        ("encoder", "qwen3vl-2b"),
        ("action_expert", "psi0"),
        ("dtype", "bfloat16"),
        ("prompt_max_len", 160),
        ("loss_reduction", "psi0"),
        ("rtc_max_delay", 8),
    ),
    value=(("backbone", "system2"),),  # mean-pooled frozen Qwen3-VL features of the bare prompt
    finetune=dataclasses.replace(PAPER.finetune, indicator_dropout=0.3),
    budget="paper scale with Ψ0's 2.6 B-parameter policy; one 80 GB GPU (benchmarks/RESULTS.md § psi0_memory)",
)

PRESETS: dict[str, StudyConfig] = {
    c.name: c for c in (SMOKE, DEMO, CPU, CPU_LONG, CPU_POWER, CPU_POWER_MIXED, GPU, PAPER, PSI0)
}


def get_preset(name: str) -> StudyConfig:
    """Returns the named preset; an unknown name raises ``ValueError`` naming the closest preset."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.0)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}.")
