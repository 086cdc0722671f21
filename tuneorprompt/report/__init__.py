"""Outputs of a run: `report.json` (the machine-readable result), the terminal summary, and
`report.html` (plots to send to a team). All three render the same `Report`."""

from tuneorprompt.report.build import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report"]
