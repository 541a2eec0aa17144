"""Build the Cython extensions in tlsm_ext/.

Every extension has a pure-Python twin in tlsm/, so a build without a C
compiler still yields a working package when TLSM_PURE_PYTHON=1 is set.
"""

import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "tlsm_ext." + path[len("tlsm_ext/") : -len(".pyx")],
        [path],
        extra_compile_args=["-O3"],
    )
    for path in sorted(glob.glob("tlsm_ext/*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )
)
