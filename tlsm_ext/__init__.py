"""Cython implementations of tlsm's hot paths.

Each module here has a pure-Python twin in tlsm/ with the same behaviour and
exceptions; tlsm imports these when they are built and TLSM_PURE_PYTHON is not
set.
"""

# The extensions import parts of tlsm, and tlsm imports the extensions while
# it loads. Loading tlsm first, before any extension, lets each side find
# the other complete, whichever a program imports first.
import tlsm  # noqa: E402,F401
