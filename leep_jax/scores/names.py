"""The names of the scores: one tuple, one ``Literal`` type, what each score reads.

Every layer above (the streaming engine, ``score_model``, ``score_zoo``, the CLI, the
experiments) takes score names from here, so a score added to the library is added here
once.
"""

from __future__ import annotations

from typing import Literal, get_args

ScoreName = Literal[
    "leep",
    "nce",
    "h_score",
    "regularized_h_score",
    "logme",
    "transrate",
    "gbc",
    "sfda",
    "parc",
    "nleep",
]

SCORE_NAMES: tuple[ScoreName, ...] = get_args(ScoreName)

# What each score reads from a model's forward pass: its predictions (probabilities or
# logits over the source classes) or, for every other score, its penultimate features.
PREDICTION_SCORES: tuple[ScoreName, ...] = ("leep", "nce")
FEATURE_SCORES: tuple[ScoreName, ...] = tuple(
    name for name in SCORE_NAMES if name not in PREDICTION_SCORES
)

# The scores `score_model` and `score_zoo` compute unless told otherwise: one pass each,
# cheap next to the forward pass. The others fit iteratively or build N x N matrices.
DEFAULT_SCORES: tuple[ScoreName, ...] = ("leep", "nce", "h_score")

# How the score is written in tables and figures.
SCORE_LABELS: dict[ScoreName, str] = {
    "leep": "LEEP",
    "nce": "NCE",
    "h_score": "H-score",
    "regularized_h_score": "reg. H-score",
    "logme": "LogME",
    "transrate": "TransRate",
    "gbc": "GBC",
    "sfda": "SFDA",
    "parc": "PARC",
    "nleep": "NLEEP",
}


def check_score_names(names, *, allowed: tuple[str, ...] = SCORE_NAMES) -> tuple[ScoreName, ...]:
    """``names`` (one name or a sequence) as a tuple, or ValueError naming the problem.

    Raises:
      ValueError: if ``names`` is empty, repeats a name, or has a name not in ``allowed``.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [name for name in names if name not in allowed]
    if not names or unknown or len(set(names)) != len(names):
        problem = f"unknown {unknown[0]!r}" if unknown else "empty or repeated"
        raise ValueError(
            f"metrics must be a non-empty subset of {allowed}, got {names!r} ({problem})"
        )
    return names
