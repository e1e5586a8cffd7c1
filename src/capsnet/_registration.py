"""Who registered a name: what the registries of models and datasets record, so that a checkpoint can say what to
import where its model or dataset is not registered."""

from __future__ import annotations

import sys


def importing_module() -> str:
    """The ``__name__`` of the module whose top-level code is running, the one an import runs (a script's:
    ``"__main__"``), past the registering function and any helper functions that called it."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame.f_globals.get("__name__", "")


def registration_hint(plugins: str | None, module: str, command_line: bool) -> str:
    """What to import so that a checkpoint's model or dataset is registered: its run's ``--plugins``, else the
    module that registered it when the run trained (``""``: not recorded), worded for the command line or Python."""
    if plugins:
        hints = (f"its run imported --plugins {plugins}: pass the same",
                 f"import {plugins}, which its run imported, first")
    elif module == "__main__":
        script = "it was registered by the script that trained it: register it the same way first"
        hints = (f"{script}, in a module passed as --plugins MODULE", script)
    elif module:
        hints = (f"pass --plugins {module}, the module that registered it",
                 f"import {module}, which registered it, first")
    else:
        hints = ("pass --plugins MODULE, the module that registers it", "import the module that registers it first")
    return hints[0] if command_line else hints[1]
