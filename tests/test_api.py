"""The library as a Python user meets it: the public names at the package root, loaded only when used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import stargate_lite


def test_every_public_name_is_the_object_its_module_defines():
    assert {"run", "evaluate", "Store", "load_recipe", "export", "run_status", "estimate"} <= set(stargate_lite.__all__)
    for name in stargate_lite.__all__:
        module = importlib.import_module(f"stargate_lite.{stargate_lite._API[name]}")
        assert getattr(stargate_lite, name) is getattr(module, name), name
    assert set(stargate_lite.__all__) == set(stargate_lite._API) and set(stargate_lite.__all__) <= set(dir(stargate_lite))


def test_an_unknown_name_is_an_attribute_error_and_submodules_still_import():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        stargate_lite.nothing_here  # noqa: B018
    from stargate_lite import loop

    assert loop.run is stargate_lite.run


def test_importing_the_package_and_its_api_loads_no_torch():
    """`stargate-lite --help` and a script's `from stargate_lite import ...` stay instant: torch, transformers and
    llama.cpp load only when a model is."""
    code = ("import sys, stargate_lite\n"
            "heavy = lambda: sorted({'torch', 'transformers', 'llama_cpp', 'peft'} & set(sys.modules))\n"
            "assert not heavy(), heavy()\n"
            "from stargate_lite import run, evaluate, Store, load_recipe, run_status, export, estimate\n"
            "assert not heavy(), heavy()\n"
            "import stargate_lite.cli\n"
            "assert not heavy(), heavy()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_readme_example_runs_as_written(tmp_path):
    """The store and recipe half of the README's library example, on a real (empty) store."""
    from stargate_lite import StargateError, Store, load_recipe, run_status

    recipe = load_recipe("tiny")
    assert recipe.questioner.model
    store = Store(tmp_path / "home")
    assert run_status(store)["runs"] == []
    with pytest.raises(StargateError):
        load_recipe("no-such-recipe")
