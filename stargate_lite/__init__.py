"""stargate-lite: teach a language model to ask good clarifying questions (STaR-GATE) on one GPU.

The library behind every command. Each name below is loaded when first used, so `import stargate_lite` stays
instant and loads no torch (the commands' `--help` depends on it):

    from stargate_lite import Store, evaluate, load_recipe, run
    run(load_recipe("tiny"), iterations=2, home="my-home")
    evaluate(home="my-home")
"""

__version__ = "0.1.0"

import importlib
import warnings

# peft asks transformers a question that transformers deprecated; there is nothing for our users to do about it.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# The public API: name -> the module that defines it.
_API = {
    "run": "loop",  # stargate-lite run
    "load_recipe": "recipe",
    "Recipe": "recipe",
    "Store": "store",
    "StargateError": "errors",
    "run_status": "commands.status",  # stargate-lite status
    "estimate": "commands.dryrun",  # stargate-lite run --dry-run
    "export": "commands.export",  # stargate-lite export
    "export_dataset": "commands.dataset",  # stargate-lite export --data
    "browse": "commands.browse",  # stargate-lite browse
    "import_data": "stages.data",  # stargate-lite data import
    "evaluate": "evaluation.evaluate",  # stargate-lite eval
    "summarize": "evaluation.evaluate",  # stargate-lite report's tables
    "report": "evaluation.report",  # stargate-lite report: tables, plots and report.md
    "probe": "evaluation.probe",  # stargate-lite probe: does the loop teach?
    "asked_facts": "engines.gate",  # the facts of a persona a Questioner turn asks for (simulate.reveal asked)
    "UserEnvironment": "environment",  # the simulated user and the reward, for a trainer to drive (reset, step)
}
__all__ = ["Recipe", "StargateError", "Store", "UserEnvironment", "asked_facts", "browse", "estimate", "evaluate",
           "export", "export_dataset", "import_data", "load_recipe", "probe", "report", "run", "run_status",
           "summarize"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'stargate_lite' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
