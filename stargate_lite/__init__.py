"""stargate-lite: teach a language model to ask good clarifying questions (STaR-GATE) on one GPU."""

__version__ = "0.1.0"

import warnings

# peft asks transformers a question that transformers deprecated; there is nothing for our users to do about it.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
