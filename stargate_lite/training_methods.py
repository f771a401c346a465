"""The training methods by name (train.method): the registry.

A method is a module of stargate_lite/methods/ named as the method (sft.py is `sft`), whose `METHOD` is its
object; modules whose names begin with "_" hold what several methods share and are none. Adding a method is
adding its module: nothing here or elsewhere lists the names.

The names are read from the folder's file names, without importing the modules, so that the recipe (a foundation,
below the methods' layer) can validate train.method here. A method's module is imported only when it is asked
for by name (`training_method`): the one place where a foundation reaches the methods' layer, as a plug-in is
loaded, so that the recipe can ask a method what it refuses before any work (docs/layout.md).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from .errors import StargateError

METHODS_DIR = Path(__file__).with_name("methods")


@functools.cache
def method_names() -> tuple[str, ...]:
    """Every registered method's name, sorted."""
    return tuple(sorted(path.stem for path in METHODS_DIR.glob("*.py") if not path.stem.startswith("_")))


def unknown_method(name: str) -> str:
    """The one line that refuses a name no method has, listing those that are."""
    return f"no training method {name!r}: the registered ones are {', '.join(method_names())}"


def training_method(name: str):
    """The method registered as `name` (a stargate_lite.methods.Method); its module is imported now if it was not."""
    if name not in method_names():
        raise StargateError("train.method: " + unknown_method(name))
    method = importlib.import_module(f"{__package__}.methods.{name}").METHOD
    if method.name != name:
        raise StargateError(f"stargate_lite/methods/{name}.py registers a method named {method.name!r}: a method's "
                            "module is named as the method")
    return method
