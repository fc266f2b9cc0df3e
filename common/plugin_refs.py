"""Names of the operator's own code, `package.module:function`, and importing them (no torch: flags check them early)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Collection
from typing import Any

from fedtl.common.errors import ConfigError

_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_plugin(ref: str) -> bool:
    return bool(_REF.fullmatch(ref)) and not ref.startswith(("timm:", "synthetic:", "cifar10:"))


def load(ref: str, flag: str) -> Callable[..., Any]:
    if not is_plugin(ref):  # defence in depth: callers check first, but nothing malformed is ever handed to the importer
        raise ConfigError(f"{flag} {ref[:80]!r}: not package.module:function; nothing was imported")
    module_name, _, attribute = ref.partition(":")
    if os.getcwd() not in sys.path:  # the `fedtl` command, unlike `python -m`, does not look in the folder it runs from
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{flag} {ref}: cannot import {module_name} ({exc}); install it, or run from the folder that holds it "
                          "(or put that folder on PYTHONPATH)") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{flag} {ref}: {module_name} has no function {attribute!r}")
    return function


def is_allowed(ref: str, allowed: Collection[str]) -> bool:
    """Whether a coordinator-named reference is built in, or a plugin from a module (or package) this client allows."""
    module = ref.partition(":")[0]
    return not is_plugin(ref) or any(module == a or module.startswith(a + ".") for a in allowed)


def check_allowed(ref: str, allowed: Collection[str], what: str = "model") -> None:
    """Refuse to import a coordinator-named plugin this client's operator did not allow."""
    module = ref.partition(":")[0]
    if not is_allowed(ref, allowed):
        raise ConfigError(f"the coordinator's {what} is the plugin {ref}: code this client would import and run. Review it, then "
                          f"allow it with --allow-plugin {module.split('.')[0]} (or --allow-plugin {module})")
