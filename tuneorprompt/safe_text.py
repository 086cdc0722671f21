"""Text the tool writes or shows but did not write itself: credentials in URLs are masked
everywhere (`mask_credentials`)."""

from __future__ import annotations

import re
from typing import Any

# A URL's user information (`user:password@` after `scheme://`), up to the authority's last "@" (one
# inside a password is percent-encoded): a token may stand in the user name, so both are masked.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/?#\s]*@")


def mask_credentials(value: Any) -> Any:
    """`value` (text, or a config as JSON: dicts and lists of text) with every URL's credentials shown as
    `***@`. Where a URL is written (config.yaml, report.json, MLflow) or shown; the client keeps the real one."""
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub("***@", value)
    if isinstance(value, dict):
        return {key: mask_credentials(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_credentials(item) for item in value]
    return value
