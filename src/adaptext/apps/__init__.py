"""Applications built on a trained classifier: a sentiment monitor with alerts, an intent router with fallback and
text-pair ranking for recommendation. They use the inference and evaluation layers and are used by `deploy`
(`serve`'s `POST /route`) and the CLI."""
