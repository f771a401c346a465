"""stargate-lite: teach a language model to ask good clarifying questions (STaR-GATE) on one GPU."""

__version__ = "0.1.0"
