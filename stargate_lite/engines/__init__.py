"""Engines: the models and servers the stages drive (the Questioner and its decoder, the chat-model backends for
Roleplayer, Oracle and Judge, managed servers and tied processes, model resolution, batch budgets, memory)."""
