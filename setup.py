"""Build the Cython extensions in tlsm_ext/.

Every extension has a pure-Python twin in tlsm/, so a build without a C
compiler still yields a working package when TLSM_PURE_PYTHON=1 is set.

The extensions named in _USES_ZLIB compute checksums with zlib's crc32
when zlib.h is found at build time (Debian: zlib1g-dev). Without it,
tlsm_ext.writer uses its own table, tlsm_ext.compact reads every block
through the Python path, and the others call Python's zlib; all give the
same values.
"""

import glob
import os
import sysconfig

from Cython.Build import cythonize
from setuptools import Extension, setup


def _zlib_include_dir():
    """Return the directory that holds zlib.h, or None when it is not found."""
    candidates = [
        sysconfig.get_config_var("INCLUDEDIR"),
        "/usr/include",
        "/usr/local/include",
    ]
    for variable in ("CPATH", "C_INCLUDE_PATH"):
        candidates += os.environ.get(variable, "").split(os.pathsep)
    for directory in candidates:
        if directory and os.path.exists(os.path.join(directory, "zlib.h")):
            return directory
    return None


# Extensions that cimport tlsm_ext.zlib_crc.
_USES_ZLIB = (
    "tlsm_ext.writer",
    "tlsm_ext.scan",
    "tlsm_ext.table_writer",
    "tlsm_ext.compact",
)


def _extension(path):
    name = "tlsm_ext." + path[len("tlsm_ext/") : -len(".pyx")]
    options = {"extra_compile_args": ["-O3"]}
    zlib_dir = _zlib_include_dir()
    if name in _USES_ZLIB and zlib_dir is not None:
        options.update(
            include_dirs=[zlib_dir],
            define_macros=[("TLSM_HAVE_ZLIB", "1")],
            libraries=["z"],
        )
    return Extension(name, [path], **options)


extensions = [_extension(path) for path in sorted(glob.glob("tlsm_ext/*.pyx"))]

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
