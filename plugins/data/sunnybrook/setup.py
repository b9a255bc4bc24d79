"""The Sunnybrook left-ventricle segmentation data plugin for DIGITS: ``pip install .``"""

from pathlib import Path

from setuptools import find_packages, setup

# The entry point group of digits.extensions.data.GROUP, spelled out: with pip's build isolation
# the digits package is not importable while this file runs.
DIGITS_PLUGIN_GROUP = "digits.plugins.data"

setup(
    name="digits_sunnybrook_data_plugin",
    version="0.1.0",
    description="A data ingestion plugin for the Sunnybrook Cardiac MR dataset (LV segmentation)",
    long_description=(Path(__file__).parent / "README").read_text(encoding="utf-8"),
    license="BSD-3-Clause",
    packages=find_packages(),
    entry_points={DIGITS_PLUGIN_GROUP: ["class=digitsDataPluginSunnybrook:DataIngestion"]},
    include_package_data=True,
    install_requires=["pydicom"],
    python_requires=">=3.11",
)
