# The reference's users run `pip install -e .` / `python setup.py develop`; all metadata lives in pyproject.toml.
from setuptools import setup

setup()
