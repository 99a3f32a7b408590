"""Explanations: word grouping, each attribution method against a hand computation, faithfulness, the files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertTokenizerFast

from adaptext.cli import main
from adaptext.core.config import load_config
from adaptext.core.errors import AdaptextError
from adaptext.explain.explainer import choose_methods, explain_texts, faithfulness_summary
from adaptext.explain.faithfulness import faithfulness, random_attributions, top_words
from adaptext.explain.methods import EXPLAINERS, IntegratedGradients, log_odds, text_log_odds
from adaptext.explain.page import highlight
from adaptext.explain.words import token_words, without_words, word_spans, words_of
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from conftest import LEARNABLE, make_chinese_rows, write_splits

TEXTS = [
    "my invoice is not right, please refund it",
    "the parcel did not arrive today!",
    "login error again with the screen",
    "why is the courier not here",
]


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A full fine-tuned run and a LoRA run of the tiny model that learned the keyword task."""
    folder = tmp_path_factory.mktemp("explain-runs")
    files = write_splits(folder, test=0)
    base = [
        f"model.name={tiny_model_dir}",
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        "data.max_length=32",
        "train.precision=fp32",
        "seed=7",
    ]
    full = train(load_config(None, [*base, *LEARNABLE, f"output_dir={folder / 'full'}"]))
    assert full.metrics["accuracy"] >= 0.9, "the fixture model did not learn the task"
    lora = train(
        load_config(
            None,
            [*base, "peft.method=lora", "train.learning_rate=1e-2", "train.epochs=2", f"output_dir={folder / 'lora'}"],
        )
    )
    return {"full": full.run_dir, "lora": lora.run_dir, "validation": files["validation"]}


@pytest.fixture(scope="module")
def predictor(runs: dict[str, Path]) -> Predictor:
    return Predictor.from_dir(runs["full"])


# --- words -----------------------------------------------------------------------------------------------------


def test_words_keep_contractions_numbers_and_split_punctuation_and_chinese() -> None:
    assert words_of("Don't e-mail me, it's 4.5 stars!!") == ["Don't", "e-mail", "me", ",", "it's", "4.5", "stars", "!!"]
    assert words_of("我很喜欢这家酒店。") == list("我很喜欢这家酒店。")
    assert words_of("naïve café") == ["naïve", "café"]
    assert words_of("it 's a film that does n't , 'scary'") == [
        "it",
        "'s",
        "a",
        "film",
        "that",
        "does",
        "n't",
        ",",
        "'",
        "scary",
        "'",
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_joining_the_words_gives_the_text_back_up_to_whitespace(text: str) -> None:
    words = words_of(text)
    assert "".join(words) == re.sub(r"\s+", "", text)
    assert all(word and not any(c.isspace() for c in word) for word in words)


def test_sub_word_tokens_belong_to_their_word_and_special_tokens_to_none(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "refund", "##s", "deliver", "##y", ",", "!", "我", "很", "好"]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    text = "Refunds, delivery!我很好"
    encoded = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    owners = token_words(encoded["offset_mapping"], word_spans(text), len(text))
    assert list(zip(tokens, owners, strict=True)) == [
        ("[CLS]", -1),
        ("refund", 0),
        ("##s", 0),
        (",", 1),
        ("deliver", 2),
        ("##y", 2),
        ("!", 3),
        ("我", 4),
        ("很", 5),
        ("好", 6),
        ("[SEP]", -1),
    ]
    # In a pair, the tokens of the second text belong to no word of the first.
    pair = tokenizer(text, "refunds", return_offsets_mapping=True)
    owners = token_words(pair["offset_mapping"], word_spans(text), len(text), pair.sequence_ids())
    assert owners[-3:] == [-1, -1, -1]


def test_removing_words_keeps_spacing_and_chinese_unspaced() -> None:
    text = "I really like it, truly"
    assert without_words(text, word_spans(text), {1}) == "I like it, truly"
    assert without_words(text, word_spans(text), {4}) == "I really like it truly"
    assert without_words("good,bad", word_spans("good,bad"), {1}) == "good bad"  # no new word "goodbad"
    chinese = "我很喜欢"
    assert without_words(chinese, word_spans(chinese), {1}) == "我喜欢"
    assert without_words(text, word_spans(text), set(range(6))) == ""


# --- the methods against hand computations ---------------------------------------------------------------------


def test_log_odds_is_the_logit_difference_for_two_labels_and_log_p_over_1_minus_p() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(log_odds(logits, False), np.log(probs / (1 - probs)))
    assert np.allclose(log_odds(np.array([[1.5, -0.5]]), False), [[2.0, -2.0]])
    assert np.allclose(log_odds(logits, True), logits)


def test_integrated_gradients_add_up_to_the_log_odds_difference_from_the_baseline(predictor: Predictor) -> None:
    targets = [int(i) for i in predictor.predict_proba(TEXTS).argmax(1)]
    spans = [word_spans(t) for t in TEXTS]
    per_word = EXPLAINERS.get("ig").attribute(predictor, TEXTS, spans, targets)
    # The baseline by hand: every token of the text replaced by [PAD], [CLS] and [SEP] kept.
    tokenizer, model = predictor.tokenizer, predictor.model
    at_text, at_baseline = [], []
    for text, target in zip(TEXTS, targets, strict=True):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        baseline = ids.clone()
        baseline[0, 1:-1] = tokenizer.pad_token_id
        with torch.no_grad():
            for inputs, into in ((ids, at_text), (baseline, at_baseline)):
                logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits.numpy()
                into.append(log_odds(logits, False)[0, target])
    for values, full, base in zip(per_word, at_text, at_baseline, strict=True):
        assert abs(full - base) > 0.5, "the fixture model should move away from the baseline"
        assert float(values.sum()) == pytest.approx(full - base, rel=0.02, abs=0.02)
    # The keyword of each text gets the largest attribution towards the predicted label.
    assert words_of(TEXTS[1])[int(np.argmax(per_word[1]))] in {"parcel", "arrive"}


def test_integrated_gradients_bound_the_tokens_of_each_pass_on_a_cpu_without_changing_the_result(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import captum.attr

    import adaptext.explain.methods as methods

    passes: list[tuple[int, int, int]] = []  # (texts, padded length, sequences per pass)
    attribute = captum.attr.LayerIntegratedGradients.attribute

    def spy(self: object, inputs: torch.Tensor, *args: object, **kwargs: object) -> object:
        passes.append((inputs.shape[0], inputs.shape[1], int(kwargs["internal_batch_size"])))  # type: ignore[call-overload]
        return attribute(self, inputs, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(captum.attr.LayerIntegratedGradients, "attribute", spy)
    targets = [int(i) for i in predictor.predict_proba(TEXTS).argmax(1)]
    spans = [word_spans(t) for t in TEXTS]
    ig = IntegratedGradients(steps=16, texts_per_batch=2)
    monkeypatch.setattr(methods, "CPU_TOKENS_PER_PASS", 10**9)
    whole = ig.attribute(predictor, TEXTS, spans, targets)
    assert all(sequences == max(16, predictor.batch_size) for _, _, sequences in passes)
    passes.clear()
    monkeypatch.setattr(methods, "CPU_TOKENS_PER_PASS", 64)
    bounded = ig.attribute(predictor, TEXTS, spans, targets)
    for texts, length, sequences in passes:
        assert sequences == max(texts, 64 // length) and sequences < 16  # captum: one step of every text at least
    for a, b in zip(whole, bounded, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_integrated_gradients_work_on_an_adapter(runs: dict[str, Path]) -> None:
    lora = Predictor.from_dir(runs["lora"])
    tokens, delta = IntegratedGradients().attribute_tokens(lora, TEXTS[:2], [0, 1])
    assert len(tokens) == 2 and np.all(np.abs(delta) < 0.05)


def test_occlusion_is_the_log_odds_drop_when_each_word_is_removed(predictor: Predictor) -> None:
    text = TEXTS[0]
    spans = [word_spans(text)]
    target = int(predictor.predict_proba([text]).argmax())
    (values,) = EXPLAINERS.get("occlusion").attribute(predictor, [text], spans, [target])
    by_hand = []
    for word in range(len(spans[0])):
        reduced = without_words(text, spans[0], {word})
        by_hand.append(
            text_log_odds(predictor, [text], None, [target])[0] - text_log_odds(predictor, [reduced], None, [target])[0]
        )
    assert np.allclose(values, by_hand, atol=1e-5)


def test_shap_values_add_up_to_the_log_odds_with_all_words_removed(predictor: Predictor) -> None:
    text = TEXTS[1]
    target = int(predictor.predict_proba([text]).argmax())
    (values,) = EXPLAINERS.get("shap").attribute(predictor, [text], [word_spans(text)], [target])
    full, empty = text_log_odds(predictor, [text, ""], None, [target, target])
    assert len(values) == len(words_of(text))
    assert float(values.sum()) == pytest.approx(full - empty, abs=1e-3)


# --- faithfulness --------------------------------------------------------------------------------------------


def test_faithfulness_matches_a_hand_computation(predictor: Predictor) -> None:
    text = "the parcel did not arrive today"
    spans = word_spans(text)
    attributions = np.array([0.0, 3.0, 0.1, 0.2, 2.0, -1.0])
    target = int(predictor.predict_proba([text]).argmax())
    bins = (0.2, 0.5)
    assert top_words(attributions, 0.2) == {1, 4}  # ceil(0.2 * 6) = 2 words
    assert top_words(attributions, 0.5) == {1, 4, 3}
    measured = faithfulness(predictor, [text], [spans], [target], [attributions], bins=bins)

    def p(t: str) -> float:
        return float(predictor.predict_proba([t])[0, target])

    comprehensiveness = np.mean([p(text) - p("the did not today"), p(text) - p("the did today")])
    sufficiency = np.mean([p(text) - p("parcel arrive"), p(text) - p("parcel not arrive")])
    assert measured.comprehensiveness == pytest.approx(comprehensiveness, abs=1e-5)
    assert measured.sufficiency == pytest.approx(sufficiency, abs=1e-5)


def test_attributions_of_a_model_that_learned_keywords_beat_random_ones(predictor: Predictor) -> None:
    texts = TEXTS * 3
    result = explain_texts(predictor, texts, methods=["ig", "occlusion"])
    random = faithfulness(predictor, texts, result.spans, result.targets, random_attributions(result.spans, 0))
    for name in ("ig", "occlusion"):
        values = [np.asarray(e.attributions) for e in result.explanations[name]]
        measured = faithfulness(predictor, texts, result.spans, result.targets, values)
        assert measured.comprehensiveness > 1.5 * random.comprehensiveness, name
        assert measured.sufficiency < random.sufficiency, name


# --- choosing methods and targets ----------------------------------------------------------------------------


def test_targets_predicted_true_and_a_named_label(predictor: Predictor) -> None:
    predicted = explain_texts(predictor, TEXTS[:2], methods=["occlusion"]).explanations["occlusion"]
    assert [e.label for e in predicted] == [e.predicted for e in predicted]
    named = explain_texts(predictor, TEXTS[:2], methods=["occlusion"], target="technical").explanations["occlusion"]
    assert {e.label for e in named} == {"technical"}
    truth = explain_texts(
        predictor, TEXTS[:2], methods=["occlusion"], target="true", true_labels=["shipping", "billing"]
    ).explanations["occlusion"]
    assert [e.label for e in truth] == ["shipping", "billing"]
    with pytest.raises(AdaptextError, match="unknown label 'nope'"):
        explain_texts(predictor, TEXTS[:1], methods=["occlusion"], target="nope")
    with pytest.raises(AdaptextError, match="unknown method"):
        explain_texts(predictor, TEXTS[:1], methods=["lime"])


# --- the command and its files -------------------------------------------------------------------------------


def test_explain_command_writes_jsonl_page_and_faithfulness(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "why"
    code = main(["explain", str(runs["full"]), "--data", str(runs["validation"]), "--output", str(out),
                 "--method", "all", "--limit", "6"])  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in (out / "explanations.jsonl").read_text(encoding="utf-8").splitlines()]
    data = pd.read_csv(runs["validation"])
    assert len(lines) == 6 * 3 and {line["method"] for line in lines} == {"ig", "occlusion", "shap"}
    for line in lines:
        assert len(line["tokens"]) == len(line["attributions"])
        assert " ".join(line["tokens"]).replace(" ", "") == data.text[line["row"] - 1].replace(" ", "")
        assert line["true_label"] == data.label[line["row"] - 1] and 0 <= line["score"] <= 1
    summary = json.loads((out / "faithfulness.json").read_text(encoding="utf-8"))
    assert set(summary["methods"]) == {"ig", "occlusion", "shap"} and summary["n_texts"] == 6
    assert set(summary["agreement_spearman"]) == {"ig vs occlusion", "ig vs shap", "occlusion vs shap"}
    page = (out / "explanations.html").read_text(encoding="utf-8")
    assert page.count("<span style='background:rgba(") >= sum(len(line["tokens"]) for line in lines)
    # A second run into the same folder needs --overwrite; into a folder of other files it is refused.
    assert main(["explain", str(runs["full"]), "--data", str(runs["validation"]), "--output", str(out)]) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["explain", str(runs["full"]), "--data", str(runs["validation"]), "--output", str(other)]) == 2
    assert (other / "notes.txt").read_text(encoding="utf-8") == "mine" and len(list(other.iterdir())) == 1


def test_onnx_exports_are_explained_by_occlusion_and_refused_by_ig(runs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["export", str(runs["full"]), "--output", str(tmp_path / "onnx")]) == 0
    onnx = Predictor.from_dir(tmp_path / "onnx")
    methods, left_out = choose_methods(onnx, ["all"])
    assert "ig" not in methods and "occlusion" in methods and "ONNX" in left_out["ig"]
    with pytest.raises(AdaptextError, match=r"cannot explain this model.*ONNX"):
        choose_methods(onnx, ["ig"])
    torch_model = Predictor.from_dir(runs["full"])
    same = [explain_texts(p, TEXTS[:2], methods=["occlusion"]).explanations["occlusion"] for p in (onnx, torch_model)]
    for a, b in zip(*same, strict=True):
        assert np.allclose(a.attributions, b.attributions, atol=1e-3)


def test_chinese_text_is_explained_a_character_at_a_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = make_chinese_rows(60, seed=1)
    pd.DataFrame(rows).to_csv(tmp_path / "zh.csv", index=False)
    result = train(
        load_config(
            None,
            [
                f"model.name={tiny_model_dir}",
                f"data.train={tmp_path / 'zh.csv'}",
                f"output_dir={tmp_path / 'run'}",
                "data.max_length=32",
                "train.precision=fp32",
                "train.epochs=2",
                "seed=1",
            ],
        )
    )
    explained = explain_texts(Predictor.from_dir(result.run_dir), [rows[0]["text"]], methods=["ig"])
    (explanation,) = explained.explanations["ig"]
    assert explanation.tokens == list(rows[0]["text"])


def test_the_evaluation_report_shows_misclassified_examples_with_highlights(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    rows = pd.read_csv(runs["validation"]).head(12)
    rows.loc[:3, "label"] = ["technical", "billing", "shipping", "technical"]  # some of these are now wrong
    rows.to_csv(tmp_path / "mixed.csv", index=False)
    predictor = Predictor.from_dir(runs["full"])
    wrong = int(
        (np.asarray(predictor.labels)[predictor.predict_proba(rows.text.tolist()).argmax(1)] != rows.label).sum()
    )
    assert wrong >= 1
    out = tmp_path / "eval"
    assert main(["evaluate", str(runs["full"]), "--data", str(tmp_path / "mixed.csv"), "--output", str(out),
                 "--errors", "2"]) == 0  # fmt: skip
    page = (out / "report.html").read_text(encoding="utf-8")
    section = page.split("Misclassified examples", 1)[1].split("<h2>", 1)[0]
    assert section.count("<tr><td>") == min(2, wrong) and "<span style='background:rgba(" in section
    assert main(["evaluate", str(runs["full"]), "--data", str(tmp_path / "mixed.csv"), "--output", str(out),
                 "--errors", "0", "--overwrite"]) == 0  # fmt: skip
    assert "Misclassified examples" not in (out / "report.html").read_text(encoding="utf-8")


def test_in_a_pair_only_the_first_text_is_explained_and_the_second_held_fixed(predictor: Predictor) -> None:
    texts, pairs = ["my invoice please", "where is it"], ["the parcel", "login error"]
    result = explain_texts(predictor, texts, pairs=pairs, methods=["ig", "occlusion"])
    for name in ("ig", "occlusion"):
        assert [e.tokens for e in result.explanations[name]] == [words_of(t) for t in texts]
        assert [e.pair for e in result.explanations[name]] == pairs
    _, delta = IntegratedGradients().attribute_tokens(predictor, texts, result.targets, pairs)
    assert np.all(np.abs(delta) < 0.05)


def test_shap_explains_a_one_word_text_exactly(predictor: Predictor) -> None:
    target = int(predictor.predict_proba(["invoice"]).argmax())
    (values,) = EXPLAINERS.get("shap").attribute(predictor, ["invoice"], [word_spans("invoice")], [target])
    full, empty = text_log_odds(predictor, ["invoice", ""], None, [target, target])
    assert values.tolist() == pytest.approx([full - empty], abs=1e-5)


def test_a_label_named_like_a_target_keyword_is_reached_with_the_label_prefix(predictor: Predictor) -> None:
    renamed = Predictor(predictor.model, predictor.tokenizer, max_length=32)
    renamed.labels = ["true", "predicted", "technical"]
    with pytest.raises(AdaptextError, match="write label:true"):
        explain_texts(renamed, TEXTS[:1], methods=["occlusion"], target="true", true_labels=["technical"])
    predicted = explain_texts(renamed, TEXTS[:1], methods=["occlusion"], target="predicted").explanations
    assert predicted["occlusion"][0].label == predicted["occlusion"][0].predicted  # the default keeps its meaning
    assert explain_texts(renamed, TEXTS[:1], methods=["occlusion"], target="label:predicted").targets == [1]
    explained = explain_texts(renamed, TEXTS[:2], methods=["occlusion"], target="label:true")
    assert {e.label for e in explained.explanations["occlusion"]} == {"true"}


def test_words_past_max_length_are_marked_unseen_and_left_out_of_faithfulness(predictor: Predictor) -> None:
    long_text = " ".join(["my invoice is wrong"] * 12)  # 48 words; the fixture model reads 32 tokens
    result = explain_texts(predictor, [long_text, TEXTS[0]], methods=["ig", "occlusion"])
    seen = result.seen[0]
    assert 20 < seen < 32 and result.seen[1] == len(words_of(TEXTS[0]))
    for name in ("ig", "occlusion"):
        long, short = result.explanations[name]
        assert long.words_seen == seen and short.words_seen is None
        assert not any(long.attributions[seen:]) and any(long.attributions[:seen])
    page = highlight(long.tokens, long.attributions, long.words_seen)
    assert page.count("class='unseen'") == len(long.tokens) - seen
    summary = faithfulness_summary(predictor, [long_text, TEXTS[0]], result)
    assert set(summary["methods"]) == {"ig", "occlusion"}
