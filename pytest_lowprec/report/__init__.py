"""Renderers: they turn final verdicts into text, HTML and tables, and never decide or raise."""
