"""Contract tests of `strategy: zeroshot`: the temperature fit, the similarity scorer (checked against plain
`transformers` by hand), the NLI scorer, the data it accepts, and the saved folder in predict and serve."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from fastapi.testclient import TestClient

from adaptext.core.config import Config, load_config
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.deploy.serve import ServeOptions, create_app
from adaptext.evaluation.calibration import fit_temperature
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from adaptext.training.state import TrainResult
from conftest import LABELS, make_rows

# The tiny vocabulary holds these words, so neither the texts nor the hypotheses below hit [UNK].
PROBE_TEXTS = [
    "my invoice is not with the refund again",
    "the parcel is not with the courier today",
    "login error with the screen",
    "please help with the refund",
    " ".join(["the courier is not with my package"] * 12),  # longer than max_length: truncated
]
GRID_STEP = math.log(1000) / 120  # fit_temperature's log-spaced grid from 1e-3 to 1


def zeroshot_config(tiny_model_dir: Path, folder: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            "seed=7",
            "strategy=zeroshot",
            *overrides,
        ],
    )


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def metadata(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "adaptext.json").read_text(encoding="utf-8"))


def evaluated(result: TrainResult) -> int:
    """How many examples the run's final evaluation (metrics.json) counted."""
    return int(json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))["n_examples"])


@torch.inference_mode()
def mean_pooled(model_dir: Path, texts: list[str], max_length: int) -> torch.Tensor:
    """The documented similarity embedding, with plain `transformers`: the saved model's last layer is the
    mean-pooling layer, so take the states before it, average them over the attention mask, centre each vector
    (LayerNorm without scale) and L2-normalise."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = encoder(**batch, output_hidden_states=True).hidden_states[-2]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return F.normalize(mean - mean.mean(dim=-1, keepdim=True), dim=-1)


# the temperature --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.02, 0.05, 0.2])
def test_fit_temperature_recovers_the_temperature_of_sampled_labels(temperature: float) -> None:
    rng = np.random.default_rng(0)
    cosine = rng.uniform(-0.2, 0.6, size=(20_000, 4))
    z = cosine / temperature
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    targets = np.asarray([rng.choice(4, p=p) for p in probs])
    fitted = fit_temperature(cosine, targets)
    assert abs(math.log(fitted / temperature)) <= 2 * GRID_STEP, fitted
    # A temperature rescales the scores: it never changes which label wins.
    assert fitted > 0
    assert np.array_equal(np.argmax(cosine / fitted, axis=1), np.argmax(cosine, axis=1))


def test_fit_temperature_is_sharp_for_separable_labels_and_flat_for_random_ones() -> None:
    rng = np.random.default_rng(1)
    cosine = rng.uniform(0, 0.5, size=(2000, 3))
    assert fit_temperature(cosine, np.argmax(cosine, axis=1)) <= 1.5e-3  # always right: as sharp as allowed
    assert fit_temperature(cosine, rng.integers(0, 3, size=2000)) >= 0.5  # unrelated labels: nearly uniform


# the similarity scorer --------------------------------------------------------------------------

ZS_LABELS = ["billing", "shipping_delay", "tech_support"]


def zs_rows(n: int, seed: int) -> list[dict[str, str]]:
    rename = dict(zip(LABELS, ZS_LABELS, strict=True))
    return [{"text": r["text"], "label": rename[r["label"]]} for r in make_rows(n, seed=seed)]


@pytest.fixture(scope="module")
def similarity_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("zeroshot")
    files = {
        "train": write_rows(folder / "train.csv", zs_rows(30, seed=1)),
        "validation": write_rows(folder / "validation.csv", zs_rows(15, seed=2)),
        "descriptions": write_rows(
            folder / "descriptions.csv", [{"label": "billing", "description": "an invoice or a refund"}]
        ),
    }
    config = zeroshot_config(
        tiny_model_dir,
        folder,
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        f"data.label_descriptions={files['descriptions']}",
    )
    return {"result": train(config), "files": files, "config": config}


def test_similarity_run_writes_a_run_folder_and_a_described_model(similarity_run: dict[str, Any]) -> None:
    result: TrainResult = similarity_run["result"]
    run = result.run_dir
    assert {"config.yaml", "labels.json", "metrics.json", "run_stats.json", "report.html", "model"} <= {
        p.name for p in run.iterdir()
    }
    assert json.loads((run / "labels.json").read_text(encoding="utf-8")) == ZS_LABELS
    stats = json.loads((run / "run_stats.json").read_text(encoding="utf-8"))
    assert stats["strategy"] == "zeroshot" and stats["train_seconds"] >= 0
    assert evaluated(result) == 15 and result.eval_split == "validation"

    saved = metadata(result.model_dir)
    assert saved["strategy"] == "zeroshot" and saved["scorer"] == "similarity"
    assert saved["labels"] == ZS_LABELS
    assert saved["hypotheses"] == [
        "This example is about an invoice or a refund.",  # the description
        "This example is about shipping delay.",  # the name, `_` as a space
        "This example is about tech support.",
    ]
    assert saved["descriptions"] == {"billing": "an invoice or a refund"}
    assert saved["max_length"] == 32
    assert 0.999e-3 <= saved["temperature"] <= 1.0  # within fit_temperature's grid
    # A plain sequence-classification model: the tiny encoder's two layers plus the mean-pooling layer.
    config = json.loads((result.model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["num_hidden_layers"] == 3 and config["id2label"] == {str(i): n for i, n in enumerate(ZS_LABELS)}

    predictor = Predictor.from_dir(run)
    assert predictor.labels == ZS_LABELS and not predictor.multi_label
    probs = predictor.predict_proba(PROBE_TEXTS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_similarity_logits_are_cosines_over_the_temperature(similarity_run: dict[str, Any]) -> None:
    result: TrainResult = similarity_run["result"]
    saved = metadata(result.model_dir)
    texts = mean_pooled(result.model_dir, PROBE_TEXTS, max_length=32)
    labels = mean_pooled(result.model_dir, saved["hypotheses"], max_length=128)
    cosine = (texts @ labels.T).numpy()
    logits = Predictor.from_dir(result.run_dir).predict_logits(PROBE_TEXTS)
    # The temperature may be as small as 1e-3, so compare the cosines (logits x T), then the logits relatively.
    np.testing.assert_allclose(logits * saved["temperature"], cosine, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits, cosine / saved["temperature"], rtol=1e-4, atol=1e-4)
    assert np.ptp(cosine, axis=1).max() > 1e-4  # the labels score differently, so a swap would show


def test_the_fitted_temperature_is_the_best_one_for_the_training_file(similarity_run: dict[str, Any]) -> None:
    """With a training file, nothing is trained: its examples only set the temperature."""
    result: TrainResult = similarity_run["result"]
    saved = metadata(result.model_dir)
    rows = zs_rows(30, seed=1)
    texts = mean_pooled(result.model_dir, [r["text"] for r in rows], max_length=32)
    labels = mean_pooled(result.model_dir, saved["hypotheses"], max_length=128)
    targets = np.asarray([ZS_LABELS.index(r["label"]) for r in rows])
    expected = fit_temperature((texts @ labels.T).numpy(), targets)
    assert saved["temperature"] == pytest.approx(expected, rel=1e-6)


def test_a_given_temperature_is_used_as_given(
    similarity_run: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    files = similarity_run["files"]
    config = zeroshot_config(
        tiny_model_dir,
        tmp_path,
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        "zeroshot.temperature=0.1",
        "zeroshot.template=It is about {label} .",
    )
    result = train(config)
    saved = metadata(result.model_dir)
    assert saved["temperature"] == 0.1
    assert saved["hypotheses"] == [
        "It is about billing .",
        "It is about shipping delay .",
        "It is about tech support .",
    ]
    texts = mean_pooled(result.model_dir, PROBE_TEXTS, max_length=32)
    labels = mean_pooled(result.model_dir, saved["hypotheses"], max_length=128)
    logits = Predictor.from_dir(result.run_dir).predict_logits(PROBE_TEXTS)
    np.testing.assert_allclose(logits, (texts @ labels.T).numpy() / 0.1, rtol=0, atol=1e-4)


def test_a_template_without_the_label_field_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"zeroshot\.template.*\{label\}"):
        zeroshot_config(tiny_model_dir, tmp_path, "zeroshot.template=This example is about it.")


@pytest.mark.parametrize("value", ["0", "-0.05"])
def test_a_temperature_that_is_not_positive_is_a_config_error(tiny_model_dir: Path, tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"zeroshot\.temperature"):
        zeroshot_config(tiny_model_dir, tmp_path, f"zeroshot.temperature={value}")


def test_labels_and_a_validation_file_are_enough(tiny_model_dir: Path, tmp_path: Path) -> None:
    validation = write_rows(tmp_path / "validation.csv", make_rows(12, seed=2))
    config = zeroshot_config(
        tiny_model_dir,
        tmp_path,
        "zeroshot.labels=[technical, billing, shipping]",
        f"data.validation={validation}",
    )
    result = train(config)
    assert result.eval_split == "validation" and evaluated(result) == 12
    saved = metadata(result.model_dir)
    assert saved["labels"] == LABELS  # sorted, as labels from a training file are
    assert saved["temperature"] == 0.05  # nothing to fit it on: the evaluated file is not used for it
    assert Predictor.from_dir(result.run_dir).predict_logits(PROBE_TEXTS).shape == (len(PROBE_TEXTS), 3)


def test_with_a_test_file_the_validation_file_sets_the_temperature(tiny_model_dir: Path, tmp_path: Path) -> None:
    validation = write_rows(tmp_path / "validation.csv", make_rows(12, seed=2))
    test = write_rows(tmp_path / "test.csv", make_rows(9, seed=3))
    config = zeroshot_config(
        tiny_model_dir,
        tmp_path,
        "zeroshot.labels=[billing, shipping, technical]",
        f"data.validation={validation}",
        f"data.test={test}",
    )
    result = train(config)
    assert result.eval_split == "test" and evaluated(result) == 9
    saved = metadata(result.model_dir)
    texts = mean_pooled(result.model_dir, [r["text"] for r in make_rows(12, seed=2)], max_length=32)
    labels = mean_pooled(result.model_dir, saved["hypotheses"], max_length=128)
    targets = np.asarray([LABELS.index(r["label"]) for r in make_rows(12, seed=2)])
    assert saved["temperature"] == pytest.approx(fit_temperature((texts @ labels.T).numpy(), targets), rel=1e-6)


def test_labels_can_come_from_the_description_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    validation = write_rows(tmp_path / "validation.csv", make_rows(6, seed=2))
    descriptions = write_rows(
        tmp_path / "descriptions.csv",
        [{"label": name, "description": f"a {letter} problem"} for name, letter in zip(LABELS, "xyz", strict=True)],
    )
    config = zeroshot_config(
        tiny_model_dir, tmp_path, f"data.validation={validation}", f"data.label_descriptions={descriptions}"
    )
    saved = metadata(train(config).model_dir)
    assert saved["labels"] == LABELS
    assert saved["hypotheses"] == [f"This example is about a {k} problem." for k in "xyz"]


def test_a_description_file_without_a_label_column_is_a_data_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    validation = write_rows(tmp_path / "validation.csv", make_rows(6, seed=2))
    descriptions = write_rows(tmp_path / "descriptions.csv", [{"name": n, "description": n} for n in LABELS])
    config = zeroshot_config(
        tiny_model_dir, tmp_path, f"data.validation={validation}", f"data.label_descriptions={descriptions}"
    )
    with pytest.raises(DataError, match=r"descriptions\.csv"):
        train(config)


def test_without_labels_or_training_data_it_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    validation = write_rows(tmp_path / "validation.csv", make_rows(6, seed=2))
    with pytest.raises(AdaptextError, match=r"zeroshot\.labels"):
        train(zeroshot_config(tiny_model_dir, tmp_path, f"data.validation={validation}"))
    with pytest.raises(AdaptextError, match="at least two"):
        train(zeroshot_config(tiny_model_dir, tmp_path, "zeroshot.labels=[billing]", f"data.validation={validation}"))
    # Labels but nothing to evaluate on.
    with pytest.raises(AdaptextError, match=r"data\.validation"):
        train(zeroshot_config(tiny_model_dir, tmp_path, "zeroshot.labels=[billing, shipping]"))
    assert not (tmp_path / "run").exists()


def test_a_validation_label_outside_the_labels_names_file_and_row(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = make_rows(6, seed=2)
    rows[3]["label"] = "refunds"
    validation = write_rows(tmp_path / "validation.csv", rows)
    config = zeroshot_config(
        tiny_model_dir, tmp_path, "zeroshot.labels=[billing, shipping, technical]", f"data.validation={validation}"
    )
    with pytest.raises(DataError) as info:
        train(config)
    message = str(info.value)
    assert str(validation) in message and "row 4:" in message and "'refunds'" in message


def test_multi_label_zeroshot_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    train_file = write_rows(tmp_path / "train.csv", make_rows(12))
    with pytest.raises(AdaptextError, match="multi_label"):
        train(zeroshot_config(tiny_model_dir, tmp_path, f"data.train={train_file}", "data.multi_label=true"))


def test_serve_and_predict_answer_for_a_zeroshot_folder(
    similarity_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adaptext.cli import main

    result: TrainResult = similarity_run["result"]
    predictor = Predictor.from_dir(result.run_dir)
    expected = predictor.predict_proba(PROBE_TEXTS)
    with TestClient(create_app({"zs": predictor}, ServeOptions())) as client:
        response = client.post("/predict", json={"inputs": PROBE_TEXTS})
        assert response.status_code == 200, response.text
        for row, probs in zip(response.json(), expected, strict=True):
            scores = {item["label"]: item["score"] for item in row}
            assert set(scores) == set(ZS_LABELS)
            np.testing.assert_allclose([scores[name] for name in ZS_LABELS], probs, rtol=0, atol=1e-5)
        raw = client.post("/predict", json={"inputs": PROBE_TEXTS[:1], "parameters": {"function_to_apply": "none"}})
        scores = {item["label"]: item["score"] for item in raw.json()[0]}
        logits = predictor.predict_logits(PROBE_TEXTS[:1])[0]
        np.testing.assert_allclose([scores[name] for name in ZS_LABELS], logits, rtol=1e-5, atol=1e-4)
        assert client.get("/info").json()["models"][0]["labels"] == ZS_LABELS

    out = tmp_path / "predictions.csv"
    validation = similarity_run["files"]["validation"]
    assert main(["-q", "predict", str(result.run_dir), "--input", str(validation), "--output", str(out)]) == 0
    frame = pd.read_csv(out)
    probs = predictor.predict_proba(list(frame["text"]))
    assert list(frame["label"]) == [ZS_LABELS[i] for i in probs.argmax(axis=1)]


# the bundled sentence encoder -------------------------------------------------------------------

CLEAR = [
    ("The striker scored twice and the team won the football match.", "sports"),
    ("She won the tennis final in three sets.", "sports"),
    ("The marathon runners crossed the finish line in record time.", "sports"),
    ("Heavy rain and strong winds are expected tomorrow afternoon.", "weather"),
    ("The forecast says it will be sunny and warm all week.", "weather"),
    ("A snowstorm brought freezing temperatures overnight.", "weather"),
    ("Chop the onions and fry them in butter until golden.", "cooking"),
    ("Bake the cake in the oven for forty minutes.", "cooking"),
    ("Season the soup with salt and simmer it for an hour.", "cooking"),
]


@pytest.mark.bundled
def test_bundled_minilm_classifies_obvious_texts_zero_shot(tmp_path: Path) -> None:
    validation = write_rows(tmp_path / "validation.csv", [{"text": t, "label": label} for t, label in CLEAR])
    config = load_config(
        None,
        [
            "model.name=minilm",
            "strategy=zeroshot",
            "zeroshot.labels=[sports, weather, cooking]",
            f"data.validation={validation}",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    result = train(config)
    assert result.metrics["accuracy"] >= 7 / 9, result.metrics
    predictions = Predictor.from_dir(result.run_dir).predict([t for t, _ in CLEAR])
    assert sum(p.label == label for p, (_, label) in zip(predictions, CLEAR, strict=True)) >= 7


# the NLI scorer ---------------------------------------------------------------------------------

NLI_DESCRIPTIONS = [
    {"label": "billing", "description": "invoice refund"},
    {"label": "shipping", "description": "parcel"},
    {"label": "technical", "description": "crash bug"},
]


def make_nli_model(tiny_model_dir: Path, folder: Path, id2label: dict[int, str]) -> Path:
    """A random tiny BERT sequence classifier with NLI-style labels, saved with the tiny tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_model_dir)
    config.num_labels = len(id2label)
    config.id2label = id2label
    config.label2id = {v: k for k, v in id2label.items()}
    config.initializer_range = 0.3  # logits far enough apart that a wrong input shows
    torch.manual_seed(3)
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def nli_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_nli_model(
        tiny_model_dir, tmp_path_factory.mktemp("nli"), {0: "contradiction", 1: "ENTAILMENT", 2: "neutral"}
    )


def nli_config(tiny_model_dir: Path, nli_dir: Path, folder: Path, *overrides: str) -> Config:
    validation = write_rows(folder / "validation.csv", make_rows(9, seed=2))
    descriptions = write_rows(folder / "descriptions.csv", NLI_DESCRIPTIONS)
    return zeroshot_config(
        tiny_model_dir,
        folder,
        f"zeroshot.nli_model={nli_dir}",
        "zeroshot.template=it is {label} .",
        "zeroshot.labels=[billing, shipping, technical]",
        f"data.validation={validation}",
        f"data.label_descriptions={descriptions}",
        *overrides,
    )


@torch.inference_mode()
def entailment_by_hand(model_dir: Path, text: str, hypotheses: list[str], **options: Any) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    nli = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    entail = next(i for i, name in nli.config.id2label.items() if name.lower() == "entailment")
    return np.asarray(
        [nli(**tokenizer(text, h, return_tensors="pt", **options)).logits[0, entail].item() for h in hypotheses]
    )


NLI_BUG = (
    "BUG: NliClassifier calls tokenizer.build_inputs_with_special_tokens, which transformers 5 fast tokenizers "
    "(TokenizersBackend, e.g. BertTokenizer) do not have: AttributeError on every NLI prediction"
)


@pytest.fixture(scope="module")
def nli_run(tiny_model_dir: Path, nli_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(nli_config(tiny_model_dir, nli_dir, tmp_path_factory.mktemp("nli-run")))


def test_nli_scores_are_the_entailment_logits_of_text_and_hypothesis(nli_run: TrainResult) -> None:
    saved = metadata(nli_run.model_dir)
    assert saved["scorer"] == "nli" and saved["strategy"] == "zeroshot"
    assert saved["hypotheses"] == ["it is invoice refund .", "it is parcel .", "it is crash bug ."]
    assert saved["temperature"] == 1.0  # nothing to calibrate on: entailment logits as they are
    predictor = Predictor.from_dir(nli_run.run_dir)
    assert predictor.labels == LABELS
    texts = PROBE_TEXTS[:4]
    logits = predictor.predict_logits(texts)
    for text, row in zip(texts, logits, strict=True):
        np.testing.assert_allclose(row, entailment_by_hand(nli_run.model_dir, text, saved["hypotheses"]), atol=1e-4)
    assert np.ptp(logits, axis=1).max() > 1e-2


def test_nli_with_a_given_temperature_divides_the_entailment_logits(
    tiny_model_dir: Path, nli_dir: Path, tmp_path: Path
) -> None:
    result = train(nli_config(tiny_model_dir, nli_dir, tmp_path, "zeroshot.temperature=0.5"))
    saved = metadata(result.model_dir)
    assert saved["temperature"] == 0.5
    got = Predictor.from_dir(result.run_dir).predict_logits(PROBE_TEXTS[:1])[0]
    np.testing.assert_allclose(
        got, entailment_by_hand(result.model_dir, PROBE_TEXTS[0], saved["hypotheses"]) / 0.5, atol=1e-4
    )


def test_nli_keeps_unknown_words_of_the_text(nli_run: TrainResult) -> None:
    saved = metadata(nli_run.model_dir)
    text = "my zebra invoice is not right"  # `zebra` is not in the tiny vocabulary: one [UNK]
    got = Predictor.from_dir(nli_run.run_dir).predict_logits([text])[0]
    np.testing.assert_allclose(got, entailment_by_hand(nli_run.model_dir, text, saved["hypotheses"]), atol=1e-4)


def test_nli_with_a_long_text_at_the_models_length_limit(tiny_model_dir: Path, nli_dir: Path, tmp_path: Path) -> None:
    result = train(nli_config(tiny_model_dir, nli_dir, tmp_path, "data.max_length=128"))
    saved = metadata(result.model_dir)
    text = " ".join(["my parcel is not with the courier today"] * 40)
    got = Predictor.from_dir(result.run_dir).predict_logits([text])[0]
    expected = entailment_by_hand(result.model_dir, text, saved["hypotheses"], truncation="only_first", max_length=128)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_an_nli_model_without_an_entailment_label_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = make_nli_model(tiny_model_dir, tmp_path / "plain", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(AdaptextError, match="entailment"):
        train(nli_config(tiny_model_dir, plain, tmp_path))


def test_exporting_a_zeroshot_run_is_refused_or_gives_a_usable_folder(
    similarity_run: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from adaptext.deploy.export import export_onnx

    files = similarity_run["files"]
    config = zeroshot_config(
        tiny_model_dir,
        tmp_path,
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        "zeroshot.temperature=0.05",
    )
    run = train(config).run_dir
    out = tmp_path / "onnx"
    try:
        export_onnx(run, out)
    except AdaptextError:
        assert not out.exists()
        return
    exported = Predictor.from_dir(out)
    np.testing.assert_allclose(
        exported.predict_logits(PROBE_TEXTS), Predictor.from_dir(run).predict_logits(PROBE_TEXTS), atol=1e-4
    )
