"""Choose between the Cython extensions and their pure-Python twins.

Setting the environment variable TLSM_PURE_PYTHON to a non-empty value other
than "0" forces the twins. Otherwise the extension is used when it is built.
"""

import importlib
import os

PURE_PYTHON = os.environ.get("TLSM_PURE_PYTHON", "") not in ("", "0")


def load_extension(name):
    """Return the module tlsm_ext.<name>, or None when twins are forced or it is not built."""
    if PURE_PYTHON:
        return None
    try:
        return importlib.import_module("tlsm_ext." + name)
    except ImportError:
        return None
