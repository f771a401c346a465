"""Stages of an iteration, one module each (data, simulate, score, select, respond, train): each takes records and
its engines and stores records; no stage imports another."""
