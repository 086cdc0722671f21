"""Outputs of a run: `report.json` (the machine-readable result), the terminal summary, and
`report.html` (plots to send to a team). All three are built from the same report dict."""

from tuneorprompt.report.build import build_report, write_report

__all__ = ["build_report", "write_report"]
