"""Helpers for tests that compare an extension with its pure-Python twin.

The extensions are imported directly, so the comparisons also run when
TLSM_PURE_PYTHON=1 selects the twins elsewhere.
"""

import importlib

import pytest


def load_extension(name):
    """Return the module tlsm_ext.<name>, or skip the test when it is not built."""
    try:
        return importlib.import_module("tlsm_ext." + name)
    except ImportError as exc:
        pytest.skip(
            f"tlsm_ext.{name} is not built ({exc}), so there is nothing to compare; "
            "build it with: python setup.py build_ext --inplace"
        )


def implementations(pure_module, name, attribute):
    """Return the pure class pure_module.PurePython.<attribute>, then the
    extension's tlsm_ext.<name>.<attribute> when that module is built."""
    found = [getattr(pure_module.PurePython, attribute)]
    try:
        found.append(getattr(importlib.import_module("tlsm_ext." + name), attribute))
    except ImportError:
        pass
    return found


def outcome(function, *args):
    """Call function(*args) and return ("ok", result) or the error.

    An error is returned as ("error", class, message, offset).
    """
    try:
        return ("ok", function(*args))
    except Exception as exc:  # noqa: BLE001 - the comparison covers every class
        return ("error", type(exc), str(exc), getattr(exc, "offset", None))
