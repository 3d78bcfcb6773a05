"""Test environment: never attach to a stray Ray cluster; no token files in the user's home."""

import os

os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
