"""Package discovery for the `edgewire` distribution.

One import package, `edgewire`, is mapped from four folders: the device SDK
(firmware/edgewire), the gateway (gateway/), the simulator (sim/) and the
console command with the demo (app/). setuptools' `packages.find` cannot
combine a package_dir mapping with discovery, so the packages are found here:
every folder with an __init__.py under a mapped folder. A new subpackage needs
no edit anywhere; tests/test_layout.py checks that an installed copy holds
every module of the source tree. Everything else is in pyproject.toml."""
from __future__ import annotations

import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# import package -> folder, relative to this file
PACKAGE_DIRS = {
    "edgewire": "firmware/edgewire",
    "edgewire.gateway": "gateway",
    "edgewire.sim": "sim",
    "edgewire.app": "app",
}


def mapped_packages() -> list[str]:
    found = []
    for package, folder in PACKAGE_DIRS.items():
        found.append(package)
        found.extend(f"{package}.{sub}" for sub in find_packages(os.path.join(ROOT, folder)))
    return sorted(found)


if __name__ == "__main__":
    setup(packages=mapped_packages(), package_dir=PACKAGE_DIRS)
