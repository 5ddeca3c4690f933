"""Result tables and report files."""

from dsmd.reports.report import (
    METRIC_KEYS,
    REPORT_KEYS,
    format_shares,
    format_table,
    student_shares,
    write_report,
)

__all__ = ["METRIC_KEYS", "REPORT_KEYS", "format_shares", "format_table", "student_shares", "write_report"]
