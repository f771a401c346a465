"""Evaluation: gold log-probs under four conditions, judged win rates, efficiency metrics, and their report."""
