"""The competitor in bench/serve_load.py: the minimal FastAPI app most tutorials show, a `transformers.pipeline`
called once per request.

    python bench/pipeline_app.py MODEL_DIR --port 8001
"""

import argparse
import os
from pathlib import Path

from pydantic import BaseModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Request(BaseModel):  # at module level: FastAPI resolves the endpoint's annotation by name
    inputs: str


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()

    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    folder = Path(args.model)
    if (folder / "model" / "config.json").is_file():  # a run folder
        folder = folder / "model"
    classifier = pipeline("text-classification", model=str(folder), device="cpu")
    app = FastAPI()

    @app.post("/predict")
    def predict(request: Request) -> list[list[dict[str, float | str]]]:
        return [classifier(request.inputs, top_k=None)]

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
