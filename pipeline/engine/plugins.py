"""Importing the stage modules a user names (`--plugin`, `GRISTMILL_PLUGINS`, a graph's `plugins:`), so the stages
they register join the installed ones; a module that cannot load is one line naming it, never a traceback."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

PLUGINS_VARIABLE = "GRISTMILL_PLUGINS"


class PluginError(Exception):
    """A plugin module (or an installed stage) cannot be imported; the message is one line naming it."""

    def __init__(self, module: str, reason: str):
        super().__init__(f"{module}: {reason}")
        self.module = module


def plugins_from_environment() -> tuple[str, ...]:
    """The modules `GRISTMILL_PLUGINS=mod1,mod2` names: plugins for every command of a shell or a batch job."""
    return tuple(module.strip() for module in os.environ.get(PLUGINS_VARIABLE, "").split(",") if module.strip())


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module from what is installed, PYTHONPATH, or else the current directory (like `python -m`, but
    searched last, so a file there never shadows an installed package)."""
    modules = tuple(modules)
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a module that fails as it loads: one line, not its traceback
            raise PluginError(module, explain_import_failure(module, error)) from None


def explain_import_failure(module: str, error: Exception) -> str:
    """Why importing `module` raised `error`, in one line: the module is missing, a library it imports is, its
    syntax is wrong, or its own code raised."""
    if isinstance(error, ModuleNotFoundError):
        if error.name and (module == error.name or module.startswith(error.name + ".")):
            return f"no module named {module!r} (not installed, not on PYTHONPATH, not in the current directory)"
        return f"it imports {error.name!r}, which is not installed"
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: {error.msg}"
    return f"importing failed: {type(error).__name__}: {error}"
