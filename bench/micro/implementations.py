"""Parameters that run a micro-benchmark on an extension and its pure twin."""

import importlib

import pytest


def implementations(name, pure_module):
    """Return pytest params for the extension module and the pure namespace."""
    try:
        extension = importlib.import_module("tlsm_ext." + name)
        cython = pytest.param(extension, id="cython")
    except ImportError:
        cython = pytest.param(
            None,
            id="cython",
            marks=pytest.mark.skip(reason=f"tlsm_ext.{name} is not built"),
        )
    return [cython, pytest.param(pure_module.PurePython, id="python")]
