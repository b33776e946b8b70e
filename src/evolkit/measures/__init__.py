"""Measures of a run's data: output space, difficulty and diversity (numbers, no decisions).

Each module is pure: it builds model requests and turns answers, log-probabilities or
embeddings into row scores and run statistics. Stages and commands wrap them.
"""
