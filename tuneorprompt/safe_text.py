"""Text the tool writes or shows but did not write itself: credentials in URLs are masked
everywhere (`mask_credentials`); control characters are made visible on the terminal (`printable`,
`for_terminal`), while files keep the text as it was."""

from __future__ import annotations

import re
from typing import Any

from rich.markup import escape as rich_escape

# A URL's user information (`user:password@` after `scheme://`), up to the authority's last "@" (one
# inside a password is percent-encoded): a token may stand in the user name, so both are masked.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/?#\s]*@")
# C0 controls but newline and tab, DEL, and C1: ESC (and C1's CSI, OSC) start the sequences that retitle
# a window or clear the screen; carriage return and backspace overwrite what was printed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


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


def printable(text: str) -> str:
    """`text` for the terminal: each control character written as its escape (`\\x1b`), visible and inert."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def for_terminal(text: str) -> str:
    """`text` inside a rich markup string: `printable`, and "[" escaped so rich prints it as text ("[x]"
    in a reply or message) instead of reading a style tag."""
    return rich_escape(printable(text))
