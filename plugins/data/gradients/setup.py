"""The image gradients data plugin for DIGITS (a synthetic regression dataset): ``pip install .``"""

from setuptools import find_packages, setup

# digits.extensions.data.GROUP, spelled out: digits may not be importable while pip builds this.
DIGITS_PLUGIN_GROUP = "digits.plugins.data"

setup(
    name="digits_gradients_data_plugin",
    version="0.1.0",
    description="A synthetic data plugin: images whose label is their (x, y) intensity gradient",
    license="BSD-3-Clause",
    packages=find_packages(),
    entry_points={DIGITS_PLUGIN_GROUP: ["class=digitsDataPluginGradients:DataIngestion"]},
    include_package_data=True,
    install_requires=["numpy"],
    python_requires=">=3.11",
)
