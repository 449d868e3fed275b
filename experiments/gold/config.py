"""The gold testbed's recipe (``recipes/experiments/gold_hh.yaml``): one dataclass, every knob documented."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from decoding.policy import SamplingParams
from sp_prm.errors import ConfigError
from sp_prm.formatting import PrefixFormat

CONTENDERS = ("orm", "orm-control", "sp-prm-student-ref", "sp-prm-teacher-ref", "eq2", "eq2-filtered")


@dataclass
class TeacherConfig:
    """Stage a: the gold teacher RM, trained once."""

    kind: str = field(default="probe", metadata={
        "help": "probe: a Bradley-Terry linear head over the frozen last-token features of `backbone` (one forward "
                "pass per response, no backprop; the head is saved as the model's score layer, so the teacher is a "
                "plain sequence classifier); finetune: `sp-prm train --loss orm` on `backbone` (full fine-tune)."})
    backbone: str = field(default="builtin:smollm2-135m-instruct", metadata={"help": "Teacher backbone."})
    finetune_recipe: str = field(default="recipes/hh-rlhf/train_orm_minilm.yaml", metadata={
        "help": "kind=finetune: the sp-prm train recipe (backbone, epochs, lr) used."})
    sources: list[str] = field(default_factory=lambda: [
        "../shared/data/hh-rlhf/harmless-base/test.jsonl.gz",
        "../shared/data/hh-rlhf-helpful-dove/val_conditional_pref.jsonl"], metadata={
        "help": "Preference files the teacher learns from (every HH pair the team has: 1,812 harmless-base human "
                "pairs, 363 helpful single-turn AI-labelled pairs)."})
    eval_fraction: float = field(default=0.2, metadata={
        "help": "Held-out share (hashed pair id, the team's split) for the reported accuracy; the final teacher is "
                "refit on all pairs with the chosen regularisation."})
    l2_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0], metadata={
        "help": "probe: L2 strengths tried (per standardised feature), chosen on an inner 20% of the train side."})
    prefix: PrefixFormat = field(default_factory=lambda: PrefixFormat(
        template="plain", max_prompt_tokens=192, max_response_tokens=64), metadata={
        "help": "How the teacher reads (prompt, response); recorded in its config like any sp-prm RM."})
    batch_tokens: int = field(default=8192, metadata={"help": "Padded tokens per feature forward."})
    seed: int = field(default=0, metadata={"help": "Teacher seed (inner split, optimiser)."})

    def __post_init__(self) -> None:
        if isinstance(self.prefix, dict):
            self.prefix = PrefixFormat(**self.prefix)
        if self.kind not in ("probe", "finetune"):
            raise ConfigError(f"teacher.kind must be probe or finetune, got {self.kind!r}")


@dataclass
class DataConfig:
    """Stage b: on-policy preference pairs labelled by the teacher."""

    prompt_sources: list[str] = field(default_factory=lambda: [
        "../shared/data/hh-rlhf/harmless-base/test.jsonl.gz", "../shared/data/hh-rlhf-helpful-dove/test.jsonl",
        "../shared/data/hh-rlhf-helpful-dove/val_sft.jsonl"], metadata={
        "help": "Where prompts come from: HH pair files (their prompt) or DOVE files (`instruction`); deduplicated."})
    eval_prompts: int = field(default=240, metadata={
        "help": "Prompts held out for evaluation (value and search), chosen by hashed prompt text; never trained on."})
    train_prompts: int | None = field(default=900, metadata={"help": "Training prompts used (null: all the rest)."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Responses sampled per prompt (pairs: all of them)."})
    max_new_tokens: int = field(default=64, metadata={
        "help": "Response budget T (policy tokens); a response is what the policy wrote within T (judged finished)."})
    min_gap_std: float = field(default=0.25, metadata={
        "help": "Near-ties skipped: a pair needs |teacher gap| >= this many standard deviations of the teacher's "
                "rewards over all samples."})
    label_noise: float = field(default=0.0, metadata={
        "help": "Knob: share of *training* pairs whose label is flipped (seeded; recorded per pair). Evaluation pairs "
                "are never flipped."})
    batch_prompts: int = field(default=8, metadata={"help": "Prompts sampled together."})
    seed: int = field(default=0, metadata={"help": "Sampling and label-noise seed (fixed across training seeds)."})


@dataclass
class GoldConfig:
    """The known-gold testbed (see ``experiments/gold/__init__.py``)."""

    work_dir: str = field(default="outputs/gold", metadata={"help": "Everything is written under this folder."})
    policy: str = field(default="builtin:smollm2-135m-instruct", metadata={"help": "The policy (samples, rollouts, search)."})
    dtype: str = field(default="float32", metadata={"help": "Policy / teacher dtype (bfloat16 on a GPU)."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda (default: cuda if available)."})
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.7, top_p=0.9), metadata={
        "help": "The policy's sampling everywhere: on-policy data, rollouts of V, search."})
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # contenders (stage c)
    student: str = field(default="builtin:all-minilm-l6-v2", metadata={
        "help": "Contenders' backbone (cheap: contenders x seeds are trained; MiniLM trains ~10x faster than SmolLM2)."})
    student_prefix: PrefixFormat = field(default_factory=lambda: PrefixFormat(
        template="plain", max_prompt_tokens=192, max_response_tokens=96), metadata={
        "help": "Contenders' representation (96 MiniLM tokens hold a 64-token SmolLM2 response whole)."})
    orm_recipe: str = field(default="recipes/hh-rlhf/train_orm_minilm.yaml", metadata={"help": "Student ORM recipe."})
    sst_recipe: str = field(default="recipes/hh-rlhf/prepare_sst_minilm.yaml", metadata={"help": "SST prepare recipe."})
    sp_recipe: str = field(default="recipes/hh-rlhf/train_sst_minilm.yaml", metadata={"help": "Partial-pair recipe."})
    orm_epochs: int = field(default=2, metadata={"help": "Student ORM epochs on the full on-policy pairs."})
    sst_pairs: int | None = field(default=1000, metadata={
        "help": "Training pairs cut into SST partial pairs (x sst_k in the recipe); 300 steps x 16 use ~4,800 of them. "
                "The teacher scores every prefix once per prefix (another tokenizer), the costliest CPU step."})
    extra_steps: int = field(default=300, metadata={
        "help": "The budget every contender gets on top of the ORM (optimizer steps of extra_batch pairs), "
                "the ORM compute control included."})
    extra_batch: int = field(default=16, metadata={"help": "Pairs per extra optimizer step."})
    contenders: list[str] = field(default_factory=lambda: list(CONTENDERS), metadata={
        "help": f"Which of {CONTENDERS} to train (orm always)."})
    # evaluation (stage d)
    value_pairs: int = field(default=150, metadata={"help": "Held-out pairs whose prefixes get a process value."})
    token_counts: list[int] = field(default_factory=lambda: [1, 5, 10, 20], metadata={
        "help": "Prefix lengths (policy tokens) of evaluate-rm; V is computed for every t here (and full, exactly)."})
    rollouts: int = field(default=8, metadata={
        "help": "Rollouts M per prefix for V. M = 8 leaves V's split-half ceiling near chance at t <= 20 on HH with "
                "T = 64 (RESULTS.md section 5): a decisive endpoint (a) needs M >= 64 (a GPU run)."})
    value_batch_rows: int = field(default=64, metadata={
        "help": "Rollout rows sampled together (evaluate-rm's process_value.batch_rows); on a GPU raise it (e.g. "
                "1024) so that one call holds many prefixes x M."})
    search_prompts_per_fold: int = field(default=25, metadata={"help": "Search prompts per fold (2 folds)."})
    search_guides: list[str] | None = field(default=None, metadata={
        "help": "Guides of the search stage (default: every trained contender; orm first = the baseline)."})
    search_methods: list[str] = field(default_factory=lambda: ["bon", "cbs"], metadata={
        "help": "Decoders: bon, cbs (the primary endpoint), args (run with args.w_units: spread), cards "
                "(run with cards.tau_u_quantile: 0.9), unless search_overrides set those."})
    value_name: str = field(default="value", metadata={
        "help": "Sub-folder of the seed's process-value evaluation (another name for a pilot on fewer pairs or "
                "contenders; the rollouts cache is shared, so a later, larger evaluation reuses the pilot's)."})
    sizing_targets: dict[str, float] = field(default_factory=lambda: {"value": 0.03, "search": 0.1}, metadata={
        "help": "The size stage's targets: the smallest difference each endpoint must detect (agreement points as a "
                "fraction; teacher-reward SDs), at two-sided 5% with 80% power."})
    report_name: str = field(default="summary", metadata={
        "help": "compare writes <work_dir>/<report_name>.{json,md} and its plots with this prefix (another name for "
                "a second search run, e.g. the secondary guides)."})
    search_name: str = field(default="search", metadata={
        "help": "Sub-folder of the seed's search run (another name for a second run, e.g. args/cards on two guides)."})
    search_overrides: dict[str, object] = field(default_factory=dict, metadata={
        "help": "Extra fields of the prm_guided config, its search blocks nested (n, args: {k, w, w_units}, "
                "cbs: {...}, cards: {tau_u_quantile, ...}, ...)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds compare pools."})
    seed: int = field(default=0, metadata={"help": "The training seed of the seed stages."})
    bootstrap_resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples of every interval."})

    def __post_init__(self) -> None:
        for name, cls in (("sampling", SamplingParams), ("teacher", TeacherConfig), ("data", DataConfig),
                          ("student_prefix", PrefixFormat)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        bad = [c for c in self.contenders if c not in CONTENDERS]
        if bad:
            raise ConfigError(f"contenders: unknown {bad}; choose from {CONTENDERS}")
        if "orm" not in self.contenders:
            self.contenders = ["orm", *self.contenders]

    # -- paths --------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.work_dir)

    @property
    def teacher_dir(self) -> Path:
        return self.root / "teacher"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def seed_dir(self, seed: int | None = None) -> Path:
        return self.root / f"seed{self.seed if seed is None else seed}"
