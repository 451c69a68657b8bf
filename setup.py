"""Installation script of skbilevel."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "skbilevel" / "__init__.py").read_text()
).group(1)

setup(
    name="skbilevel",
    version=VERSION,
    description=(
        "Gradient-based hyperparameter optimization and meta-learning for "
        "scikit-learn (bilevel programming, Franceschi et al. 2018)"
    ),
    long_description=(HERE / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    packages=find_packages(include=["skbilevel", "skbilevel.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.23",
        "scipy>=1.9",
        "scikit-learn>=1.6",
        "torch>=2.1",
        "joblib>=1.3",
        "threadpoolctl>=3.1",
        "tqdm>=4.60",
    ],
    extras_require={
        "tests": [
            "pytest>=7",
            "pandas>=1.5",
            "ruff>=0.6",
            "hypothesis>=6.80",
            "matplotlib>=3.6",
            # tests/test_parallel.py runs the search on a real Dask cluster
            # and on Ray (doc/cluster.rst's recipes run too).
            "dask[distributed]>=2023.1",
            "ray>=2.9; python_version<'3.14'",
        ],
        "docs": [
            "sphinx>=7",
            "numpydoc>=1.6",
            "sphinx-gallery>=0.15",
            "pydata-sphinx-theme>=0.15",
            "matplotlib>=3.6",
            "pandas>=1.5",
        ],
        "examples": ["matplotlib>=3.6", "pandas>=1.5"],
        "dask": ["dask[distributed]>=2023.1"],
        "ray": ["ray>=2.9"],
        "benchmarks": ["pandas>=1.5", "matplotlib>=3.6"],
    },
    classifiers=[
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: BSD License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
