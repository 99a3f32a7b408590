"""Evaluating a saved model on a labelled file into a report folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adaptext.core.config import DataConfig
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.core.run import read_train_log
from adaptext.data.io import load_examples
from adaptext.data.labels import check_known_labels
from adaptext.evaluation.errors import explained_errors
from adaptext.evaluation.metrics import EvalReport, compute_ood_metrics, evaluate_data
from adaptext.inference.predictor import Predictor


def evaluate_file(
    model_path: str | Path,
    data_path: str | Path,
    output_dir: str | Path,
    columns: dict[str, str | None] | None = None,
    *,
    overwrite: bool = False,
    errors: int = 20,
    ood_label: str | None = None,
) -> EvalReport:
    """Evaluate a saved model (run or model folder) on a labelled file and write the report into `output_dir`.

    `columns` may set `text_column`, `text_pair_column` and `label_column`; by default those the model
    was trained with. Pointing at a run folder adds its training curves to the report. `output_dir` must be a new
    or empty folder, or an earlier evaluation report (replaced only with `overwrite`); never a run folder.
    The report shows up to `errors` misclassified examples with the words that made the model decide.

    With `ood_label`, rows with that label are out of scope: the model's out-of-scope detector is scored on them
    (`compute_ood_metrics`: in-scope accuracy, out-of-scope recall and precision, AUROC, FPR95, and accuracy with
    out-of-scope as one more class), and the report shows both groups' score histograms.

    >>> evaluate_file("runs/quickstart", "data/banking77/train.csv", "eval-out")  # doctest: +SKIP
    """
    from adaptext.evaluation.report import OOD_PLOT, ood_section, plot_ood_scores, write_report  # matplotlib here

    model_path, data_path = expand(model_path), expand(data_path)
    output = check_output_dir(output_dir, "evaluation", overwrite=overwrite, inputs=[model_path, data_path])
    predictor = Predictor.from_dir(model_path)
    settings = predictor.info.data_settings(columns) | {"multi_label": predictor.multi_label}
    cfg = DataConfig.model_validate(settings)
    data = load_examples(data_path, cfg)
    if ood_label is not None and predictor.detector is None:
        raise AdaptextError(
            f"--ood-label: {model_path} has no out-of-scope detector; train it with ood.method set "
            "(e.g. ood.method=auto)"
        )
    inside = [i for i, label in enumerate(data.labels or []) if label != ood_label]
    in_scope = data.subset(inside) if ood_label is not None else data
    check_known_labels(in_scope, predictor.labels)
    ood: np.ndarray | None = None
    if predictor.detector is not None:
        probs, ood = predictor.ood_scores(data.texts, data.pairs, progress=True)
    else:
        probs = predictor.predict_proba(data.texts, data.pairs, progress=True)
    sections: list[tuple[str, str]] = []
    is_oos: np.ndarray | None = None
    if ood_label is not None and ood is not None and predictor.detector is not None:
        if len(inside) == len(data):
            raise AdaptextError(f"--ood-label {ood_label!r}: no row of {data_path} has that label")
        k = len(predictor.labels)
        index = {name: i for i, name in enumerate(predictor.labels)}
        targets = np.array([index.get(str(label), k) for label in data.labels or []])
        is_oos = targets == k
        outside = predictor.detector.out_of_scope(ood)
        report = compute_ood_metrics(probs, targets, outside, ood, predictor.labels, predictor.detector.label)
        report.data_source = data.source
        sections = [("Out-of-scope scores", ood_section(predictor.detector.method, report))]
    else:
        report = evaluate_data(predictor, data, probs)
        if ood is not None and predictor.detector is not None:
            report.metrics["ood_rate"] = float(predictor.detector.out_of_scope(ood).mean())
    explained = explained_errors(predictor, in_scope, probs[inside] if ood_label is not None else probs, errors)
    history = read_train_log(Path(model_path) / "train_log.jsonl")
    title = f"{model_path} on {data_path}"

    def write(folder: Path) -> None:
        if is_oos is not None and ood is not None and predictor.detector is not None:
            plot_ood_scores(ood[~is_oos], ood[is_oos], predictor.detector, folder / OOD_PLOT)
        write_report(
            report,
            folder,
            history=history,
            title=title,
            errors=explained,
            errors_source=str(data_path),
            sections=sections,
        )

    replace_folder(output, write, "evaluation")
    return report
