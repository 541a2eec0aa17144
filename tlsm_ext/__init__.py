"""Cython implementations of tlsm's hot paths.

Each module here has a pure-Python twin in tlsm/ with the same behaviour and
exceptions; tlsm imports these when they are built and TLSM_PURE_PYTHON is not
set.
"""
