"""POSTing an alert to a webhook, with retries and exponential backoff."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from adaptext.apps.monitor.config import WebhookSection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """What posting one alert came to: the attempts made, and the last error when none succeeded."""

    attempts: int
    delivered: bool
    error: str | None = None


def post_alert(payload: dict[str, Any], webhook: WebhookSection) -> Delivery:
    """POST `payload` as JSON to `webhook.url`: a 2xx answer delivers it; anything else is retried
    `webhook.retries` times, waiting `backoff`, then twice as long, and so on.

    The alert's id is sent as the `Idempotency-Key` header, so a receiver can drop a repeat whose first answer was
    lost on the way back.
    """
    if webhook.url is None:
        raise ValueError("post_alert needs a webhook URL")
    body = json.dumps(payload).encode("utf-8")
    error = ""
    for attempt in range(1, webhook.retries + 2):
        request = urllib.request.Request(
            webhook.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": f"adaptext-alert-{payload.get('id')}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=webhook.timeout) as answer:
                if 200 <= answer.status < 300:
                    return Delivery(attempts=attempt, delivered=True)
                error = f"HTTP {answer.status}"
        except urllib.error.HTTPError as failure:
            error = f"HTTP {failure.code}"
        except (urllib.error.URLError, OSError) as failure:
            error = str(getattr(failure, "reason", failure))
        logger.warning("webhook %s: attempt %d failed: %s", webhook.url, attempt, error)
        if attempt <= webhook.retries:
            time.sleep(webhook.backoff * 2 ** (attempt - 1))
    return Delivery(attempts=webhook.retries + 1, delivered=False, error=error)
