"""Scenarios: which stages run, in which order, over which records."""
