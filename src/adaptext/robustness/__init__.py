"""Robustness of a classifier: label-preserving perturbations and a word-substitution attack (`adaptext robustness`).

See `docs/perturbations.md`.
"""

from adaptext.robustness.attack import AttackOutcome, AttackSettings, WordNeighbours, attack_text
from adaptext.robustness.files import REPORT_JSON, REPORT_PAGE, robustness_file
from adaptext.robustness.report import RobustnessReport, RobustnessSettings, check_robustness

__all__ = [
    "REPORT_JSON",
    "REPORT_PAGE",
    "AttackOutcome",
    "AttackSettings",
    "RobustnessReport",
    "RobustnessSettings",
    "WordNeighbours",
    "attack_text",
    "check_robustness",
    "robustness_file",
]
