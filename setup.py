"""Maps the top-level folders onto subpackages of one `spatialforge` package.

The `operator/` folder must never be importable as a top-level `operator` (that would
shadow the standard library), so every folder is installed under `spatialforge.`.
Everything else about the distribution lives in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "spatialforge": "spatialforge",
    "operator": "spatialforge.operator",
    "crds": "spatialforge.crds",
    "runner": "spatialforge.runner",
    "apiserver": "spatialforge.apiserver",
}

packages: list[str] = []
package_dir: dict[str, str] = {}
for folder, package in FOLDERS.items():
    package_dir[package] = folder
    packages.append(package)
    packages.extend(f"{package}.{sub}" for sub in find_packages(folder))

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"spatialforge.crds": ["*.yaml", "samples/*.yaml", "samples/invalid/*.yaml"],
                  "spatialforge.apiserver.console": ["static/*", "static/vendor/*", "static/vendor/*/*"]},
)
