"""Scorers, one file each, behind one small interface (``base.Scorer``: ``score(prompts, partials) -> rewards``).

* ``rm.ClassifierScorer`` -- a sequence-classification reward model (ORM or trained SP-PRM) as a search
  scorer (``scorer.name: rm:<path>``);
* ``rm_engine.EngineRewardScorer`` -- the same reward model served by a vLLM pooling engine, in this
  process or on a server (``scorer.backend: vllm``; imported on demand, it needs vLLM);
* ``rear.RearScorer`` -- REAR(lambda) on the policy itself, its two sums ``A`` / ``B`` and the post-hoc
  lambda sweep (``best_of_n_terms``, ``select``, ``rear_scores``);
* ``genrm.GenRMScorer`` -- the policy as its own yes/no judge (REAR appendix C).

Every scorer says whether its score is ``additive`` over steps and its default aggregation.
(Not to be confused with ``sp_prm.scoring.RewardScorer``, the raw batched RM forward over token
ids that ``ClassifierScorer`` uses for encoders, nor ``sp_prm.prefix_scoring.PrefixScorer``, which
scores every prefix of a response for data preparation and evaluation.)
"""

from decoding.scorers.base import Scorer, check_lengths
from decoding.scorers.genrm import GENRM_JUDGE, GenRMScorer
from decoding.scorers.rear import RearScorer, TermsResult, best_of_n_terms, rear_combine, rear_scores, select
from decoding.scorers.rm import ClassifierScorer

__all__ = ["Scorer", "check_lengths", "ClassifierScorer", "RearScorer",
           "rear_combine", "rear_scores", "select", "best_of_n_terms", "TermsResult", "GenRMScorer", "GENRM_JUDGE"]
