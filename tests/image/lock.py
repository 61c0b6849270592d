"""Regenerate the image's lock files with pip-tools (``pip install pip-tools`` first):

    python3 -m tests.image.lock

- image/requirements.lock: pyproject.toml's runtime dependencies, resolved for the running Python (3.11),
  every distribution file of each pinned version hashed (so the lock also serves other platforms).
- image/build-requirements.lock: image/build-requirements.in (setuptools, wheel: the build backend).

tests/unit/test_image_lock.py checks that the locks still satisfy pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMON = ("--generate-hashes", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--quiet")


def main() -> int:
    pip_compile = shutil.which("pip-compile")
    if pip_compile is None:
        print("pip-compile not found: pip install pip-tools", file=sys.stderr)
        return 2
    env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "python3 -m tests.image.lock"}
    env.pop("PIP_FIND_LINKS", None)  # hashes of PyPI's files only
    for args in (
        ("--allow-unsafe", "--output-file=image/build-requirements.lock", "image/build-requirements.in"),
        ("--output-file=image/requirements.lock", "pyproject.toml"),
    ):
        subprocess.run([pip_compile, *COMMON, *args], cwd=REPO, env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
