"""The image gradients view plugin for DIGITS (the tutorial's view half): ``pip install .``"""

from pathlib import Path

from setuptools import find_packages, setup

# The entry point group of digits.extensions.view.GROUP, spelled out: with pip's build isolation
# the digits package is not importable while this file runs.
DIGITS_PLUGIN_GROUP = "digits.plugins.view"

setup(
    name="digits_gradients_view_plugin",
    version="0.1.0",
    description="A view plugin drawing a predicted image gradient as an arrow over the input",
    long_description=(Path(__file__).parent / "README").read_text(encoding="utf-8"),
    license="BSD-3-Clause",
    packages=find_packages(),
    entry_points={DIGITS_PLUGIN_GROUP: ["class=digitsViewPluginGradients:Visualization"]},
    include_package_data=True,
    install_requires=["numpy", "pillow"],
    python_requires=">=3.11",
)
