"""The report: `tables` (per-cell results joined into paper tables), `figures` (drawn from the tables
folder alone) and `diff` (the tables against the paper's reported numbers). Shared rules in `common`."""

from eldistill.report.common import PAPER_PROTOCOL, cell_key

__all__ = ["PAPER_PROTOCOL", "cell_key"]
