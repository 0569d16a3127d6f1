"""Reading a process's Prometheus `/metrics` the way Prometheus parses it (shared by the
replica's and the worker's metrics tests)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Each sample's value by its name and its labels."""


def scrape(base_url: str) -> Samples:
    """Every sample of `base_url`'s `/metrics`, asked without an API key."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
