"""Evaluating a saved model on a labelled file into a report folder."""

from __future__ import annotations

from pathlib import Path

from adaptext.core.config import DataConfig
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.core.run import read_train_log
from adaptext.data.io import load_examples
from adaptext.data.labels import check_known_labels
from adaptext.evaluation.errors import explained_errors
from adaptext.evaluation.metrics import EvalReport, evaluate_data
from adaptext.inference.predictor import Predictor


def evaluate_file(
    model_path: str | Path,
    data_path: str | Path,
    output_dir: str | Path,
    columns: dict[str, str | None] | None = None,
    *,
    overwrite: bool = False,
    errors: int = 20,
) -> EvalReport:
    """Evaluate a saved model (run or model folder) on a labelled file and write the report into `output_dir`.

    `columns` may set `text_column`, `text_pair_column` and `label_column`; by default those the model
    was trained with. Pointing at a run folder adds its training curves to the report. `output_dir` must be a new
    or empty folder, or an earlier evaluation report (replaced only with `overwrite`); never a run folder.
    The report shows up to `errors` misclassified examples with the words that made the model decide.

    >>> evaluate_file("runs/quickstart", "data/banking77/train.csv", "eval-out")  # doctest: +SKIP
    """
    from adaptext.evaluation.report import write_report  # matplotlib only when a report is written

    model_path, data_path = expand(model_path), expand(data_path)
    output = check_output_dir(output_dir, "evaluation", overwrite=overwrite, inputs=[model_path, data_path])
    predictor = Predictor.from_dir(model_path)
    settings = predictor.info.data_settings(columns) | {"multi_label": predictor.multi_label}
    cfg = DataConfig.model_validate(settings)
    data = load_examples(data_path, cfg)
    check_known_labels(data, predictor.labels)
    probs = predictor.predict_proba(data.texts, data.pairs, progress=True)
    report = evaluate_data(predictor, data, probs)
    explained = explained_errors(predictor, data, probs, errors)
    history = read_train_log(Path(model_path) / "train_log.jsonl")
    title = f"{model_path} on {data_path}"

    def write(folder: Path) -> None:
        write_report(report, folder, history=history, title=title, errors=explained, errors_source=str(data_path))

    replace_folder(output, write, "evaluation")
    return report
