"""Jinja2 templates for the catalog web page."""
