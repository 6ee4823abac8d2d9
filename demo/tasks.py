"""Tasks shaped like Blurit's: a slow image blur, a flaky fetch, a failing probe, a quick ping."""

from __future__ import annotations

import base64
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, TypeVar
from urllib.parse import urlsplit

from PIL import Image

from demo import imaging
from demo.app import app

_F = TypeVar("_F", bound=Callable[..., Any])

FETCH_RETRY_COUNTDOWN = 0.2
FETCH_MAX_RETRIES = 5


class FileRef(TypedDict):
    protocol: str
    path: str


class Chronos(TypedDict):
    total: float
    childs: dict[str, float]


class BlurResult(TypedDict):
    input_image: FileRef
    output_image: FileRef
    chronos: Chronos


class FetchResult(TypedDict):
    url: str
    attempts: int


class ProbeResult(TypedDict):
    format: str
    width: int
    height: int
    mode: str


def task(name: str, **options: Any) -> Callable[[_F], _F]:
    """``app.task`` with a type mypy can follow (Celery ships no annotations)."""
    decorator: Callable[[_F], _F] = app.task(name=name, **options)
    return decorator


def data_dir() -> Path:
    configured = os.environ.get("DEMO_DATA_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "celery-demo-data"


def resolve(ref: FileRef) -> Path:
    """Map a Blurit file reference to a path inside the data directory."""
    if ref.get("protocol") != "file":
        raise ValueError(f"unsupported storage protocol {ref.get('protocol')!r}")
    root = data_dir().resolve()
    path = (root / ref["path"]).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"path {ref['path']!r} escapes the data directory")
    return path


@task("blurit.image")
def blur_image(input_image: FileRef, output_image: FileRef, lifespan: int) -> BlurResult:
    started = time.perf_counter()
    if lifespan <= 0:
        raise ValueError(f"lifespan must be a positive number of seconds, got {lifespan}")
    source, target = resolve(input_image), resolve(output_image)
    laps: dict[str, float] = {}

    lap = time.perf_counter()
    if not source.exists():
        # Stands in for the upload Blurit would have stored before queueing.
        imaging.generate_input(source)
    with Image.open(source) as original:
        original.load()
        laps["load"] = time.perf_counter() - lap

        lap = time.perf_counter()
        denoised = imaging.denoise(original)
        laps["denoise"] = time.perf_counter() - lap

    lap = time.perf_counter()
    blurred = imaging.blur(denoised)
    laps["blur"] = time.perf_counter() - lap

    lap = time.perf_counter()
    imaging.save_jpeg(blurred, target)
    laps["store"] = time.perf_counter() - lap

    return {
        "input_image": input_image,
        "output_image": output_image,
        "chronos": {
            "total": round(time.perf_counter() - started, 6),
            "childs": {step: round(seconds, 6) for step, seconds in laps.items()},
        },
    }


@task("blurit.fetch", bind=True, max_retries=FETCH_MAX_RETRIES)
def fetch_source(self: Any, url: str, fail_times: int) -> FetchResult:
    """Fetch a remote source whose first ``fail_times`` attempts hit a dropped connection."""
    attempt: int = self.request.retries
    if attempt < fail_times:
        host = urlsplit(url).hostname or url
        error = ConnectionResetError(f"connection reset by {host} (attempt {attempt + 1})")
        raise self.retry(exc=error, countdown=FETCH_RETRY_COUNTDOWN)
    return {"url": url, "attempts": attempt + 1}


@task("blurit.probe")
def probe_upload(payload_b64: str) -> ProbeResult:
    """Identify an uploaded image; a corrupt upload raises PIL's UnidentifiedImageError."""
    raw = base64.b64decode(payload_b64, validate=True)
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        return {
            "format": image.format or "unknown",
            "width": image.width,
            "height": image.height,
            "mode": image.mode,
        }


@task("blurit.ping")
def ping() -> str:
    return "pong"
