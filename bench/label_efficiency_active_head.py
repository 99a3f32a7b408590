"""Why BANKING77 uses `fewshot.head_c: 10` in `bench/label_efficiency_active.py`: the few-shot head on the bundled
encoder's embeddings, fitted as `adaptext.strategies.fewshot.fit_head` fits it (embeddings scaled to a median norm
of 1, scikit-learn's logistic regression), on the 616 balanced labels of seed 0 and on those plus 250 random pool
texts, for several `C`; accuracy on the same 1,000 held-out rows.

    python bench/label_efficiency_active_head.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_efficiency_active as active

from adaptext.modeling.hub import resolve_model_name


def embed(texts: list[str], tokenizer: AutoTokenizer, model: AutoModel) -> np.ndarray:
    """Mean-pooled token states (n, 384), 64 tokens at most, as the few-shot strategy embeds."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = tokenizer(texts[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            states, mask = model(**enc).last_hidden_state, enc["attention_mask"].unsqueeze(-1).float()
            out.append(((states * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def main() -> None:
    torch.set_num_threads(1)
    train, test = active._splits("banking77", active.DEFAULT_DATA, 1000)
    start = train.groupby("label", group_keys=False).sample(8, random_state=0)
    pool = train.drop(start.index).sample(2000, random_state=0).reset_index(drop=True)
    extra = pool.iloc[np.random.default_rng(0).choice(len(pool), 250, replace=False)]
    path = resolve_model_name("minilm")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    labelled, added, held = (embed(f["text"].tolist(), tokenizer, model) for f in (start, extra, test))
    sets = {
        "616 balanced": (labelled, start["label"]),
        "616 + 250 random": (np.vstack([labelled, added]), pd.concat([start["label"], extra["label"]])),
    }
    for c in (1.0, 10.0, 100.0):
        for name, (x, y) in sets.items():
            scale = float(np.median(np.linalg.norm(x, axis=1)))
            clf = LogisticRegression(C=c, max_iter=1000, random_state=0).fit(x / scale, y)
            print(f"C={c:g} {name}: test accuracy {(clf.predict(held / scale) == test['label'].to_numpy()).mean():.4f}")


if __name__ == "__main__":
    main()
