"""Result tables and report files."""

from dsmd.reports.report import METRIC_KEYS, REPORT_KEYS, format_table, write_report

__all__ = ["METRIC_KEYS", "REPORT_KEYS", "format_table", "write_report"]
