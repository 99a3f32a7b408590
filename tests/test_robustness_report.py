"""Perturbations (exact outputs for a seed, unchanged where they do not apply), the word-substitution attack on the
tiny model (budget kept, flips real), and `adaptext robustness` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from adaptext.cli import main
from adaptext.core.config import DataConfig, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.data.io import load_examples
from adaptext.data.perturb import (
    DEFAULT_PERTURBATIONS,
    PERTURBATIONS,
    perturb_texts,
    register_perturbation,
)
from adaptext.inference.predictor import Predictor
from adaptext.robustness import AttackSettings, RobustnessSettings, WordNeighbours, attack_text, check_robustness
from adaptext.robustness.attack import margin
from adaptext.strategies import train
from conftest import LEARNABLE, write_splits

REPORT_KEYS = {"clean_accuracy", "n", "perturbations", "flip_rate", "attack", "worst"}
SCORE_KEYS = {"accuracy", "clean_accuracy_on_changed", "flip_rate", "changed"}
ATTACK_KEYS = {
    "success_rate",
    "accuracy_under_attack",
    "mean_words_changed",
    "mean_queries",
    "max_words",
    "max_queries",
    "attacked",
}
EXAMPLE_KEYS = {"row", "original", "perturbed", "label", "before", "after", "scores"}


def apply(name: str, text: str, seed: int = 0) -> str:
    return PERTURBATIONS.get(name)(text, random.Random(seed))


# --- perturbations ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("typos", "The delivery was quick and friendly", "The delivery wws quick and frienly"),
        ("case", "Great Film", "GREAT FILM"),
        ("punctuation", "what a waste of time !", "what a waste of time"),
        ("punctuation", "a quiet triumph", "a quiet triumph."),
        ("punctuation", "这部电影很好看", "这部电影很好看。"),
        ("whitespace", "one two three four five", " one two three four \nfive"),
        ("contractions", "I do not think it is worth it", "I don't think it's worth it"),
        ("contractions", "it 's not that it does n't work", "it is not that it does not work"),
        ("contractions", "They won't come, I'm sure", "They will not come, I am sure"),
        ("names", "John met Mary and John's sister", "Jacob met Cynthia and Jacob's sister"),
        ("names", "michael caine is great", "jacob caine is great"),
        ("names", "Will Smith", "Will Roberts"),
        (
            "numbers",
            "I paid 20 dollars for 2,500 pages in 1999, rated 4.5",
            "I paid 23 dollars for 2,777 pages in 2003, rated 3.7",
        ),
        ("numbers", "Three stars, two thumbs", "Four stars, three thumbs"),
        ("char_noise", "hello world", "hello wrold"),
        ("char_noise", "我很喜欢这家酒店", "我很喜欢这家店酒"),
        ("word_swap", "one two three four five", "one two three five four"),
        ("word_swap", "我很喜欢这家酒店", "我很喜欢这家店酒"),
        ("word_delete", "one two three four five", "one two three five"),
        ("word_delete", "我很喜欢这家酒店", "我很喜欢这家酒"),
    ],
)
def test_each_perturbation_gives_the_same_output_for_a_seed(name: str, text: str, expected: str) -> None:
    assert apply(name, text) == expected
    assert apply(name, text) == expected  # a fresh generator in the same state: the same text


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("typos", "我很喜欢这家酒店"),
        ("typos", "an ox is ok"),  # no word of three letters
        ("case", "我很喜欢这家酒店"),
        ("punctuation", "!!!"),
        ("punctuation", ""),
        ("whitespace", "   "),
        ("contractions", "我很喜欢这家酒店"),
        ("contractions", "John's film was fine"),  # a possessive is no contraction
        ("names", "the film was fine"),
        ("names", "I will mark it"),  # everyday words that are also names are not in the lists
        ("names", "Great, said john"),  # a lower-case name counts only in a text without capitals
        ("numbers", "no numbers here, not one"),
        ("numbers", "the 1990s and 3d glasses"),  # digits inside words
        ("char_noise", "... !!!"),
        ("word_swap", "alone"),
        ("word_delete", "alone"),
    ],
)
def test_a_perturbation_that_does_not_apply_returns_the_text_unchanged(name: str, text: str) -> None:
    for seed in range(5):
        assert apply(name, text, seed) == text


def test_label_preserving_perturbations_change_every_applicable_text_and_keep_it_readable() -> None:
    texts = ["John's parcel did not arrive, it is 3 days late!", "Mary's refund of 20 euros is not there"]
    for name in DEFAULT_PERTURBATIONS:
        assert PERTURBATIONS.get(name).label_preserving
        for text in texts:
            changed = apply(name, text)
            assert changed != text, name
            if name in ("case", "whitespace"):  # only the letter case or the layout moved
                assert changed.split() == text.split() or changed.lower() == text.lower()
    assert not PERTURBATIONS.get("word_delete").label_preserving


def test_perturb_texts_is_seeded_per_text_not_by_position() -> None:
    texts = ["the delivery was quick and friendly", "a quiet triumph of a film", "my refund is late again"]
    once = perturb_texts(texts, "typos", seed=3)
    assert perturb_texts(texts[::-1], "typos", seed=3) == once[::-1]
    assert perturb_texts(texts[1:], "typos", seed=3) == once[1:]
    assert perturb_texts(texts, "typos", seed=4) != once


def test_a_new_perturbation_is_registered_by_name_and_unknown_names_list_the_known() -> None:
    @register_perturbation("shout_test", description="all capitals")
    def shout(text: str, rng: random.Random) -> str:
        return text.upper()

    try:
        assert perturb_texts(["abc"], "shout_test") == ["ABC"]
        assert PERTURBATIONS.get("shout_test").description == "all capitals"
    finally:
        PERTURBATIONS.remove("shout_test")
    with pytest.raises(ConfigError, match="typos"):
        PERTURBATIONS.get("shout_test")


def test_margin_is_negative_exactly_when_the_answer_is_wrong() -> None:
    single = SimpleNamespace(multi_label=False, threshold=0.5)
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3]])
    gold = np.array([True, False, False])
    assert margin(single, probs, gold) == pytest.approx([0.5, -0.1])  # type: ignore[arg-type]
    multi = SimpleNamespace(multi_label=True, threshold=0.5)
    probs = np.array([[0.9, 0.8, 0.1], [0.9, 0.4, 0.1]])
    gold = np.array([True, True, False])
    assert margin(multi, probs, gold) == pytest.approx([0.3, -0.1])  # type: ignore[arg-type]


# --- the attack and the report on the tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run of the tiny model that learned the keyword task, and its validation file."""
    folder = tmp_path_factory.mktemp("robustness-run")
    files = write_splits(folder, test=0)
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={files['train']}",
            f"data.validation={files['validation']}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            "train.precision=fp32",
            "seed=7",
            *LEARNABLE,
        ],
    )
    result = train(config)
    assert result.metrics["accuracy"] >= 0.9, "the fixture model did not learn the task"
    return {"run": result.run_dir, "validation": files["validation"]}


@pytest.fixture(scope="module")
def predictor(run: dict[str, Path]) -> Predictor:
    return Predictor.from_dir(run["run"])


def validation(predictor: Predictor, path: Path) -> Any:
    return load_examples(path, DataConfig.model_validate(predictor.info.data_settings(None)))


def test_the_attack_keeps_its_budget_and_its_flips_are_real(predictor: Predictor, run: dict[str, Path]) -> None:
    data = validation(predictor, run["validation"])
    neighbours = WordNeighbours.of_predictor(predictor)
    assert "invoice" in neighbours.words and "##s" not in neighbours.words and "the" not in neighbours.words
    assert WordNeighbours.of_model(str(run["run"])).words == neighbours.words  # --attack-embeddings RUN
    settings = AttackSettings(max_words=2, max_queries=12, candidates=20, min_similarity=-1.0)
    index = {name: i for i, name in enumerate(predictor.labels)}
    outcomes = []
    for text, label in zip(data.texts, data.labels, strict=True):
        gold = np.eye(len(predictor.labels), dtype=bool)[index[label]]
        outcome = attack_text(predictor, neighbours, text, gold, settings)
        assert outcome.queries <= settings.max_queries and outcome.words_changed <= settings.max_words
        assert len(outcome.changes) == outcome.words_changed
        changed = [a for a, b in zip(text.split(), outcome.adversarial.split(), strict=True) if a != b]
        assert len(changed) == outcome.words_changed  # one word for one word, the rest as it was
        outcomes.append((outcome, label))
    flipped = [o for o, _ in outcomes if o.flipped]
    assert flipped, "the attack flipped nothing: the test shows nothing"
    again = predictor.predict([o.adversarial for o in flipped])
    for outcome, prediction in zip(flipped, again, strict=True):
        assert prediction.label == predictor.labels[int(np.argmax(outcome.probs_after))]
        assert prediction.label != predictor.labels[int(np.argmax(outcome.probs_before))]
    tight = AttackSettings(max_words=3, max_queries=3, candidates=20, min_similarity=-1.0)
    gold = np.eye(len(predictor.labels), dtype=bool)[index[data.labels[0]]]
    assert attack_text(predictor, neighbours, data.texts[0], gold, tight).queries <= 3


def test_the_attack_refuses_a_model_without_input_embeddings(predictor: Predictor) -> None:
    onnx_like = SimpleNamespace(model=object(), tokenizer=predictor.tokenizer)
    with pytest.raises(AdaptextError, match=r"input embeddings.*--attack-words 0"):
        WordNeighbours.of_predictor(onnx_like)  # type: ignore[arg-type]


def test_report_counts_only_the_texts_a_perturbation_changed(predictor: Predictor, run: dict[str, Path]) -> None:
    data = validation(predictor, run["validation"])
    data.texts[0] = data.texts[0] + " 12"  # the only text with a number
    settings = RobustnessSettings(perturbations=("numbers", "case", "word_delete"), attack=AttackSettings(max_words=0))
    report = check_robustness(predictor, data, settings)
    assert report.n == len(data) and report.perturbations["numbers"].changed == 1
    assert report.perturbations["case"].changed == len(data)  # lower-case texts: every one goes upper or title
    case = report.perturbations["case"]
    assert case.flip_rate is not None and case.accuracy is not None
    counted = [report.perturbations[n] for n in ("numbers", "case")]  # word_delete may change the label
    flips = sum(s.changed * (s.flip_rate or 0) for s in counted)
    assert report.flip_rate == pytest.approx(flips / sum(s.changed for s in counted))
    assert report.attack.attacked == 0 and report.attack.success_rate is None
    assert set(report.to_dict()) == REPORT_KEYS


# --- the command ------------------------------------------------------------------------------------------------


def test_cli_writes_exactly_the_promised_files_and_a_page_without_errors(
    run: dict[str, Path], tmp_path: Path, browser: Any
) -> None:
    out = tmp_path / "robust"
    argv = ["robustness", str(run["run"]), "--data", str(run["validation"]), "--output", str(out), "--limit", "12"]
    assert main([*argv, "--attack-queries", "30", "--seed", "1"]) == 0
    assert {p.name for p in out.iterdir()} == {".adaptext", "debug.log", "robustness.json", "robustness.html"}
    record = json.loads((out / "robustness.json").read_text(encoding="utf-8"))
    assert set(record) == REPORT_KEYS
    assert record["n"] == 12 and list(record["perturbations"]) == list(DEFAULT_PERTURBATIONS)
    assert all(set(score) == SCORE_KEYS for score in record["perturbations"].values())
    assert set(record["attack"]) == ATTACK_KEYS
    assert record["attack"]["max_queries"] == 30 and record["attack"]["attacked"] <= 12
    assert all(set(example) == EXAMPLE_KEYS for examples in record["worst"].values() for example in examples)
    assert record["worst"]["typos"], "typos changes every text of the keyword task"
    # an existing report is replaced only when asked
    assert main(argv) == 2
    assert main([*argv, "--overwrite", "--perturbations", "case,nonsense"]) == 2
    errors: list[str] = []
    page = browser.new_page()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((out / "robustness.html").as_uri())
    assert page.locator("svg rect").count() == len(DEFAULT_PERTURBATIONS)
    assert "Word-substitution attack" in page.content()
    page.close()
    assert errors == []
