"""Where the local stack keeps its data (embedded servers, beat's schedule): `PISA_HOME`, by default .pisa/."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def pisa_home() -> Path:
    return Path(os.environ.get("PISA_HOME") or BASE_DIR / ".pisa").resolve()
