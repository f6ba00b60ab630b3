"""Reading a node's HTTP endpoints in tests: GET without following redirects, and samples."""

from __future__ import annotations

import re
import urllib.error
import urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body of a GET (loopback only).

    Redirects are returned, not followed.
    """
    try:
        with urllib.request.build_opener(_NoRedirect()).open(url, timeout=5) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


def get(url: str) -> tuple[int, str]:
    status, _, body = fetch(url)
    return status, body


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in an exposition text (0 if absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if metric == name and found == labels:
            return float(value)
    return 0.0


def families(text: str) -> dict[str, str]:
    """Each metric family an exposition declares (``# TYPE`` lines): name -> type."""
    found = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            found[name] = kind
    return found
