"""DVC stages, one module each: read params -> run a Ray job -> write outputs; MLflow here."""

import os
from pathlib import Path


def _present_ray_token() -> None:
    # `ray start` (2.60) turns token auth on, but a client only sends the token when RAY_AUTH_MODE
    # says so, and Ray reads that variable at import time: decide before anything imports ray.
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


_present_ray_token()
