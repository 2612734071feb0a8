"""Validators: each returns a list of ingestion.report.Finding."""
