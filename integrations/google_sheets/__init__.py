"""Google Sheets integration: one row per finished call, appended in batches through gspread."""

from integrations.google_sheets.columns import ALL_COLUMNS
from integrations.google_sheets.integration import AppendRowParams, GoogleSheetsConfig, GoogleSheetsIntegration

__all__ = ["ALL_COLUMNS", "AppendRowParams", "GoogleSheetsConfig", "GoogleSheetsIntegration"]
