"""Workflows: the jobs behind the CLI (card, train, run), as functions taking plain arguments."""
