"""`adaptext predict --engine ray`: a pool of Ray workers gives the rows the local engine gives, in input order."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from adaptext.cli import main
from adaptext.inference.files import partial_paths, predict_file
from adaptext.inference.predictor import Predictor
from adaptext.inference.ray_engine import PredictBatch
from conftest import make_rows
from test_predict_stream import SimulatedCrashError, crashing, read_output, save_classifier

# Ray Data's DataContext warns about its own deprecated fields whenever it copies itself.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the module (startup takes seconds); `predict_file_ray` joins it and leaves it running."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as error:  # no shared memory, no ports, ...: the machine cannot run Ray at all
        pytest.skip(f"Ray cannot start here: {error}")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "single": save_classifier(tiny_model_dir, tmp_path_factory.mktemp("ray-single")),
        "multi": save_classifier(tiny_model_dir, tmp_path_factory.mktemp("ray-multi"), multi_label=True),
    }


def rows(n: int) -> list[dict[str, Any]]:
    # Lengths vary, so the workers' length-sorted batches differ from file order.
    return [
        {"id": n - i, "text": " ".join([row["text"]] * (1 + i % 4)), "note": f"n{i}"}
        for i, row in enumerate(make_rows(n, seed=9))
    ]


def assert_same_predictions(ray_out: pd.DataFrame, local: pd.DataFrame, *, lists: bool = False) -> None:
    assert list(ray_out.columns) == list(local.columns)
    assert ray_out["id"].astype(int).tolist() == local["id"].astype(int).tolist()  # row order kept
    assert ray_out["note"].tolist() == local["note"].tolist()
    if lists:
        assert [list(v) for v in ray_out["label"]] == [list(v) for v in local["label"]]
        for got, want in zip(ray_out["score"], local["score"], strict=True):
            assert list(got) == pytest.approx(list(want), abs=1e-5)
    else:
        assert ray_out["label"].tolist() == local["label"].tolist()
        assert ray_out["score"].tolist() == pytest.approx(local["score"].tolist(), abs=1e-5)


def test_cli_ray_engine_equals_local(
    ray_cluster: None, model_dirs: dict[str, Path], write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    source = write_csv("in.csv", rows(300))
    model = model_dirs["single"]
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["predict", str(model), "--input", str(source), "--output", str(local)]) == 0
    args = ["predict", str(model), "--input", str(source), "--output", str(remote), "--chunk-size", "64"]
    assert main([*args, "--engine", "ray", "--num-workers", "2"]) == 0
    assert_same_predictions(read_output(remote), read_output(local))
    assert not any(p.exists() for p in partial_paths(remote))


def test_ray_engine_resumes_a_local_run_multi_label(
    ray_cluster: None, model_dirs: dict[str, Path], write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    from adaptext.inference.ray_engine import predict_file_ray

    source = write_csv("in.jsonl", rows(200))
    predictor = Predictor.from_dir(model_dirs["multi"])
    local, remote = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    predict_file(predictor, source, local, chunk_size=50)
    with pytest.raises(SimulatedCrashError):
        predict_file(crashing(predictor, after=2), source, remote, chunk_size=50)
    assert predict_file_ray(model_dirs["multi"], source, remote, num_workers=2, chunk_size=50, resume=True) == 200
    assert_same_predictions(read_output(remote), read_output(local), lists=True)  # 100 rows local, 100 from Ray


@pytest.mark.freezes_heap
def test_a_ray_worker_exempts_its_loaded_model_from_garbage_collection(model_dirs: dict[str, Path]) -> None:
    """The actor class, built in this process as a worker builds it: after loading, the model and libraries are
    frozen out of the collector (`gc.freeze`), and it still predicts."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    settings = {"batch_size": 8, "source": "rows.csv", "text_columns": ["text"], "options": {}}
    settings |= {"label_delimiter": "|", "as_lists": False}
    worker = PredictBatch(str(model_dirs["single"]), settings, ["id", "text"], threads=1)
    assert gc.get_freeze_count() > 0
    frame = worker(pd.DataFrame(rows(4))[["id", "text"]])
    assert len(frame) == 4 and frame["label"].notna().all()
