"""Fixtures of the image tests: the operator image built by tests/image/build.py (buildah, a base from
Debian packages; cold ~4-6 min, then a cache hit). Every test here gets the ``image`` marker;
``PODGRACE_SKIP_IMAGE=1`` skips them. Missing tools are installed (apt-get install buildah mmdebstrap)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.image.build import BuildError, BuiltImage, build_operator_image

IMAGE_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = os.environ.get("PODGRACE_SKIP_IMAGE", "") not in ("", "0")
    for item in items:
        if IMAGE_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.image)
            if skip:
                item.add_marker(pytest.mark.skip(reason="PODGRACE_SKIP_IMAGE is set"))


@pytest.fixture(scope="session")
def operator_image() -> BuiltImage:
    if os.geteuid() != 0:
        pytest.fail("building the image needs root (buildah, mmdebstrap --mode=root)", pytrace=False)
    try:
        return build_operator_image()
    except BuildError as err:
        pytest.fail(f"the image build failed: {err}", pytrace=False)
