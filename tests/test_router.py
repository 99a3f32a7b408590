"""The intent router: answer, FAQ or handoff by the rule; the answers file checked; `route --evaluate` rates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adaptext.apps.router.config import load_route_config
from adaptext.apps.router.evaluation import evaluate_routing
from adaptext.apps.router.files import route_file
from adaptext.apps.router.route import Router, Signals, load_router
from adaptext.cli import main
from adaptext.core.errors import ConfigError, DataError
from conftest import LABELS, make_rows, train_keyword_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return train_keyword_run(tmp_path_factory.mktemp("router"), tiny_model_dir)


def write_config(folder: Path, run_dir: Path, tiny_model_dir: Path, **handoff: object) -> Path:
    pd.DataFrame({"intent": LABELS[:2], "answer": [f"answer for {x}" for x in LABELS[:2]]}).to_csv(
        folder / "answers.csv", index=False
    )
    pd.DataFrame({"question": ["why is the screen broken"], "answer": ["see the screen guide"]}).to_csv(
        folder / "faq.csv", index=False
    )
    rule = "\n".join(f"  {key}: {value}" for key, value in handoff.items())
    text = (
        f"model: {run_dir}\nanswers: answers.csv\nhandoff:\n{rule or '  message: agent'}\n"
        f"faq:\n  file: faq.csv\n  encoder: {tiny_model_dir}\n  min_similarity: 0.0\nevaluate:\n  ood_label: oos\n"
    )
    (folder / "route.yaml").write_text(text)
    return folder / "route.yaml"


def test_each_text_is_answered_sent_to_the_faq_or_handed_over_by_the_rule(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    router = load_router(load_route_config(write_config(tmp_path, run_dir, tiny_model_dir, min_confidence=0.5)))
    texts = [row["text"] for row in make_rows(30, seed=3)]
    signals = router.signals_for(texts)
    routes = router.decide(texts, signals)
    for route, confidence in zip(routes, signals.confidence, strict=True):
        assert route.confidence == pytest.approx(float(confidence))
        if route.action == "answer":
            assert confidence >= 0.5 and route.answer == f"answer for {route.intent}" and route.reason == "confident"
        else:
            # min_similarity 0: every text not answered is answered from the FAQ, with its reason kept
            assert route.action == "faq" and route.answer == "see the screen guide"
            assert route.reason == ("no_answer" if confidence >= 0.5 else "low_confidence")
            assert route.intent == "technical" or confidence < 0.5
    assert {r.action for r in routes} == {"answer", "faq"}
    strict = load_router(load_route_config(write_config(tmp_path, run_dir, tiny_model_dir, min_confidence=1.0)))
    assert all(r.action != "answer" or r.confidence >= 1.0 for r in strict.decide(texts, strict.signals_for(texts)))


def test_an_answer_for_an_unknown_intent_names_the_row(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = write_config(tmp_path, run_dir, tiny_model_dir)
    pd.DataFrame({"intent": ["billing", "refunds"], "answer": ["a", "b"]}).to_csv(tmp_path / "answers.csv", index=False)
    with pytest.raises(DataError, match=r"answers.csv: row 2: column 'intent': 'refunds' is not one"):
        load_router(load_route_config(path))


def test_route_evaluate_writes_rows_rates_and_curve_and_refuses_to_overwrite(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, run_dir, tiny_model_dir, min_confidence=0.4)
    rows = make_rows(24, seed=5) + [{"text": "please help today", "label": "oos"}] * 3
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "routed.csv"
    assert main(["route", str(config), "--input", str(tmp_path / "in.csv"), "--output", str(out), "--evaluate"]) == 0
    routed = pd.read_csv(out)
    assert len(routed) == 27 and set(routed["action"]) <= {"answer", "faq", "handoff"}
    report = json.loads((tmp_path / "routed.evaluation.json").read_text())
    m = report["metrics"]
    gold, answered = routed["label"], routed["action"] == "answer"
    correct = answered & (routed["intent"] == gold)
    assert m["automation_rate"] == pytest.approx(correct.mean())
    assert m["wrong_answer_rate"] == pytest.approx((answered & ~correct).mean())
    assert m["in_scope_automation"] == pytest.approx(correct[gold != "oos"].mean())
    wrong = [p["wrong_answer_rate"] for p in report["curve"]]
    assert wrong == sorted(wrong, reverse=True)  # a higher threshold never answers more wrongly
    assert (tmp_path / "routed.curve.png").stat().st_size > 10_000
    before = out.read_bytes()
    assert main(["route", str(config), "--input", str(tmp_path / "in.csv"), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_the_suggested_threshold_is_the_lowest_that_keeps_wrong_answers_within_the_limit(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    router = load_router(load_route_config(write_config(tmp_path, run_dir, tiny_model_dir)))
    rows = make_rows(30, seed=11)
    texts, gold = [r["text"] for r in rows], [r["label"] for r in rows]
    signals = router.signals_for(texts)
    signals.confidence = np.linspace(0.35, 0.99, len(texts))  # planted: the first 10 texts get a wrong intent
    gold = ["billing" if i >= 10 else "shipping" for i in range(len(texts))]
    signals.intent = np.zeros(len(texts), dtype=int)  # every text predicted as billing
    report = evaluate_routing(router, signals, router.decide(texts, signals), gold, None, max_wrong_rate=0.1)
    assert report.suggested is not None
    # wrong answers are texts 0-9 at the lowest confidences: at most 3 of 30 may stay answered
    assert report.suggested["min_confidence"] == pytest.approx(np.floor(signals.confidence[7] * 1e4) / 1e4)
    assert report.suggested["wrong_answer_rate"] == pytest.approx(3 / 30)


def planted_signals(router: Router, seed: int) -> tuple[list[str], Signals]:
    """30 texts, all predicted as billing, in scope by the detector, confidences rising from 0.35 to 0.99."""
    texts = [r["text"] for r in make_rows(30, seed=seed)]
    signals = router.signals_for(texts)
    signals.confidence = np.linspace(0.35, 0.99, len(texts))
    signals.intent = np.zeros(len(texts), dtype=int)
    signals.out_of_scope = np.zeros(len(texts), dtype=bool)
    return texts, signals


def test_an_out_of_scope_share_weighs_the_rates_and_moves_the_suggested_threshold(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    router = load_router(load_route_config(write_config(tmp_path, run_dir, tiny_model_dir)))
    texts, signals = planted_signals(router, seed=12)
    gold = ["oos" if i < 10 else "billing" for i in range(len(texts))]  # the 10 least confident are out of scope
    routes = router.decide(texts, signals)
    own = evaluate_routing(router, signals, routes, gold, "oos", max_wrong_rate=0.1)
    even = evaluate_routing(router, signals, routes, gold, "oos", max_wrong_rate=0.1, out_of_scope_share=0.5)
    answered = np.array([r.action == "answer" for r in routes])
    outside = np.arange(len(texts)) < 10
    assert own.metrics["wrong_answer_rate"] == pytest.approx(answered[outside].sum() / 30)
    # hand count at share 0.5: half the weight on the 10 out-of-scope rows, half on the 20 in-scope ones
    assert even.metrics["wrong_answer_rate"] == pytest.approx(0.5 * answered[outside].sum() / 10)
    assert even.metrics["automation_rate"] == pytest.approx(0.5 * answered[~outside].sum() / 20)
    m = even.metrics
    total = m["automation_rate"] + m["wrong_answer_rate"] + m["faq_rate"] + m["handoff_rate"]
    assert total == pytest.approx(1.0) and m["out_of_scope_share"] == pytest.approx(0.5)
    assert m["in_scope_automation"] == own.metrics["in_scope_automation"]  # a share of in-scope texts: unweighted
    # within 10% wrong: the file's own mix allows 3 of its 10 out-of-scope rows answered, a 50% share only 2
    assert own.suggested is not None and even.suggested is not None
    assert own.suggested["min_confidence"] == pytest.approx(np.floor(signals.confidence[7] * 1e4) / 1e4)
    assert even.suggested["min_confidence"] == pytest.approx(np.floor(signals.confidence[8] * 1e4) / 1e4)


def test_a_wrong_rate_confidence_suggests_the_lowest_threshold_whose_upper_bound_keeps_the_limit(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    router = load_router(load_route_config(write_config(tmp_path, run_dir, tiny_model_dir)))
    texts, signals = planted_signals(router, seed=13)
    gold = ["shipping" if i < 10 else "billing" for i in range(len(texts))]  # the 10 least confident are wrong
    routes = router.decide(texts, signals)
    plain = evaluate_routing(router, signals, routes, gold, None, max_wrong_rate=0.2)
    bounded = evaluate_routing(router, signals, routes, gold, None, max_wrong_rate=0.2, wrong_rate_confidence=0.95)
    assert plain.suggested is not None and bounded.suggested is not None
    # within 20% on the file: 6 of the 30 may be wrong; with 95% confidence only 1 (the bound of 1/30 is 0.172,
    # of 2/30 0.221), so the bounded suggestion answers from the 10th text on
    assert plain.suggested["min_confidence"] == pytest.approx(np.floor(signals.confidence[4] * 1e4) / 1e4)
    assert bounded.suggested["min_confidence"] == pytest.approx(np.floor(signals.confidence[9] * 1e4) / 1e4)
    # with no wrong answer among n texts the one-sided bound is 1 - alpha ** (1 / n), alpha = (1 - 0.95) / 2
    none_wrong = next(p for p in bounded.curve if p["min_confidence"] > signals.confidence[9])
    assert none_wrong["wrong_answer_rate"] == 0
    assert none_wrong["wrong_answer_upper_bound"] == pytest.approx(1 - 0.025 ** (1 / 30))


def test_an_out_of_scope_share_needs_both_kinds_of_rows_and_the_label(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path, run_dir, tiny_model_dir)
    config.write_text(config.read_text() + "  out_of_scope_share: 0.2\n")
    pd.DataFrame(make_rows(12, seed=4)).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "routed.csv"
    with pytest.raises(DataError, match=r"in.csv: column 'label' has no 'oos' rows; evaluate.out_of_scope_share"):
        route_file(load_route_config(config), tmp_path / "in.csv", out, evaluate=True)
    assert not out.exists()  # refused before anything was written
    config.write_text(config.read_text().replace("  ood_label: oos\n", ""))
    with pytest.raises(ConfigError, match=r"out_of_scope_share needs evaluate\.ood_label"):
        load_route_config(config)


def test_a_model_class_without_an_answer_can_stand_for_out_of_scope(
    run_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # a model trained with out-of-scope examples as a class: here "technical", which the answers file leaves out
    config = write_config(tmp_path, run_dir, tiny_model_dir, min_confidence=0.0)
    config.write_text(config.read_text().replace("ood_label: oos", "ood_label: technical"))
    pd.DataFrame(make_rows(30, seed=8)).to_csv(tmp_path / "in.csv", index=False)
    result = route_file(load_route_config(config), tmp_path / "in.csv", tmp_path / "out.csv", evaluate=True)
    routed = pd.read_csv(tmp_path / "out.csv")
    assert result.report is not None
    m = result.report.metrics
    outside = routed["label"] == "technical"
    answered = routed["action"] == "answer"
    assert not answered[routed["intent"] == "technical"].any()  # predicted as the class: never answered
    assert m["n_out_of_scope"] == outside.sum() > 0
    assert m["wrong_answer_rate"] == pytest.approx(
        (answered & (outside | (routed["intent"] != routed["label"]))).mean()
    )
    assert m["out_of_scope_contained"] == pytest.approx((~answered[outside]).mean())
    # a class that has an answer cannot be the out-of-scope label
    config.write_text(config.read_text().replace("ood_label: technical", "ood_label: billing"))
    with pytest.raises(DataError, match=r"'billing' is one of the model's intents and .*answers.csv answers it"):
        route_file(load_route_config(config), tmp_path / "in.csv", tmp_path / "out2.csv", evaluate=True)


def test_serve_answers_post_route_as_the_router_does(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from adaptext.deploy.serve import ServeOptions, create_app

    router = load_router(load_route_config(write_config(tmp_path, run_dir, tiny_model_dir, min_confidence=0.5)))
    texts = [row["text"] for row in make_rows(6, seed=21)]
    expected = [r.to_dict() for r in router.route(texts)]
    app = create_app({"route": router.predictor}, ServeOptions(), ("route", router))
    with TestClient(app) as client:
        answer = client.post("/route", json={"inputs": texts})
        assert answer.status_code == 200
        got = answer.json()
        assert [r["action"] for r in got] == [r["action"] for r in expected]
        assert [r["intent"] for r in got] == [r["intent"] for r in expected]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)
        assert client.post("/route", json={"inputs": [" "]}).status_code == 422
        assert client.post("/route", json={"text": "x"}).status_code == 422
