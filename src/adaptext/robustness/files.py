"""`robustness_file`: a saved model checked on a labelled file, into a folder with `robustness.json` and
`robustness.html`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from adaptext.core.config import DataConfig
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.data.io import load_examples
from adaptext.data.perturb import PERTURBATIONS
from adaptext.inference.predictor import Predictor
from adaptext.robustness.page import write_page
from adaptext.robustness.report import RobustnessReport, RobustnessSettings, check_robustness

logger = logging.getLogger(__name__)

REPORT_JSON = "robustness.json"
REPORT_PAGE = "robustness.html"


def robustness_file(
    model_path: str | Path,
    data_path: str | Path,
    output_dir: str | Path,
    columns: dict[str, str | None] | None = None,
    settings: RobustnessSettings | None = None,
    *,
    overwrite: bool = False,
) -> RobustnessReport:
    """Check a saved model (run or model folder) on a labelled file and write `robustness.json` and
    `robustness.html` into `output_dir` (a new or empty folder, or with `overwrite` an earlier robustness or
    evaluation report).

    `columns` may set `text_column`, `text_pair_column` and `label_column`; by default those the model was trained
    with, as `adaptext evaluate` reads them.

    >>> robustness_file("runs/sst2", "data/sst2/dev.csv", "robustness-out")  # doctest: +SKIP
    """

    model_path, data_path = expand(model_path), expand(data_path)
    # A robustness report is a kind of evaluation report: the same folder rules, one may replace the other.
    output = check_output_dir(output_dir, "robustness", overwrite=overwrite, inputs=[model_path, data_path])
    for name in (settings or RobustnessSettings()).perturbations:
        PERTURBATIONS.get(name)  # an unknown name fails before the model is loaded
    predictor = Predictor.from_dir(model_path)
    predictor.require_classifier("robustness")
    cfg = DataConfig.model_validate(predictor.info.data_settings(columns) | {"multi_label": predictor.multi_label})
    data = load_examples(data_path, cfg)
    report = check_robustness(predictor, data, settings, progress=True)
    report.model = str(model_path)
    logger.info("robustness of %s on %d texts checked in %.0f s", model_path, report.n, report.seconds)

    def write(folder: Path) -> None:
        (folder / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        write_page(report, folder / REPORT_PAGE)

    replace_folder(output, write, "robustness")
    return report
