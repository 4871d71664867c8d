"""Static files that come from installed PyPI packages rather than from this repository.

The charting library and the world map's geometry are files inside wheels that `pip install -r requirements.txt`
installs: this finder exposes exactly those files under `dashboard/lib/`, so that the development server (whitenoise
with finders) serves them and `collectstatic` copies them for deployments. Nothing third-party is copied into the
repository and the page never needs a CDN.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

STATIC_PREFIX = "dashboard/lib"
# static path -> (installed package, the file inside it); each file is served under its own name.
PACKAGE_ASSETS = {
    # plotly.js: the complete bundle the `plotly` wheel ships for offline use.
    f"{STATIC_PREFIX}/plotly.min.js": ("plotly", "package_data/plotly.min.js"),
    # Natural Earth 1:110m countries as TopoJSON, keyed by ISO 3166 numeric code (bqplot's world map, Apache-2.0).
    f"{STATIC_PREFIX}/WorldMap.json": ("bqplot", "map_data/WorldMap.json"),
}


def package_directory(package: str) -> Path | None:
    """Where an installed package lives, found without importing it (importing bqplot would pull in Jupyter)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_asset_path(static_path: str) -> Path | None:
    """The installed file behind one of PACKAGE_ASSETS, or None when its package is missing or no longer ships it."""
    package, inner = PACKAGE_ASSETS[static_path]
    directory = package_directory(package)
    if directory is None:
        return None
    path = directory / inner
    return path if path.is_file() else None


class PackageAssetFinder(BaseFinder):
    def check(self, **kwargs):
        return [
            Error(f"static file {static_path} is missing: package {PACKAGE_ASSETS[static_path][0]!r} is not "
                  f"installed or no longer ships {PACKAGE_ASSETS[static_path][1]}",
                  hint="pip install -r requirements.txt", id="dashboard.E001")
            for static_path in PACKAGE_ASSETS if package_asset_path(static_path) is None
        ]

    def find(self, path, find_all=False, **kwargs):
        found = package_asset_path(path) if path in PACKAGE_ASSETS else None
        if found is None:
            return [] if find_all else None
        return [str(found)] if find_all else str(found)

    def list(self, ignore_patterns):
        for static_path in PACKAGE_ASSETS:
            found = package_asset_path(static_path)
            if found is None:
                continue
            storage = FileSystemStorage(location=str(found.parent))
            storage.prefix = STATIC_PREFIX  # collectstatic and whitenoise serve a storage's files under its prefix
            yield found.name, storage
