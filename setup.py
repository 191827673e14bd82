"""Build script: the Python package, its shipped checkpoints, and `kernels/` installed as
`nag_engine.kernels`.

Metadata lives in pyproject.toml. The native kernels in csrc/ (`nag_engine._C`) are added here
by the kernels issue; until then the package is pure Python.
"""

from setuptools import setup

setup(
    packages=[
        "nag_engine",
        "nag_engine.analysis",
        "nag_engine.models",
        "nag_engine.training",
        "nag_engine.kernels",
    ],
    package_dir={"nag_engine.kernels": "kernels"},
    package_data={"nag_engine": ["assets/*.safetensors"]},
)
