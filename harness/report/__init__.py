"""Rendering of the HTML report (templates and styles live in reports/ at the project's top level)."""
