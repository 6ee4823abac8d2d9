"""The deterministic task mix the load generator sends."""

from __future__ import annotations

import base64
import io
import itertools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

# Weights loosely follow an image service: mostly blurs, some fetches from
# remote storage, upload probes and cheap health pings.
MIX: dict[str, float] = {
    "blurit.image": 0.5,
    "blurit.fetch": 0.2,
    "blurit.probe": 0.15,
    "blurit.ping": 0.15,
}
CORRUPT_UPLOAD_RATE = 1 / 3
FETCH_FAILURES = (0, 1, 1, 2, 3)
IMAGE_SIZES = (480, 640, 1280, 1920)
LIFESPAN = 3600

Outcome = Literal["SUCCESS", "FAILURE"]


@dataclass(frozen=True)
class Dispatch:
    """One task to send and what it is designed to do."""

    task: str
    kwargs: dict[str, Any]
    expect: Outcome
    retries: int


def dispatches(seed: int | None) -> Iterator[Dispatch]:
    """Endless stream of dispatches; the same seed always yields the same stream."""
    rng = random.Random(seed)
    names, weights = list(MIX), list(MIX.values())
    epoch_ms = rng.randrange(1_700_000_000_000, 1_800_000_000_000)
    for index in itertools.count():
        name = rng.choices(names, weights)[0]
        if name == "blurit.image":
            yield _image(rng, epoch_ms + index)
        elif name == "blurit.fetch":
            yield _fetch(rng)
        elif name == "blurit.probe":
            yield _probe(rng)
        else:
            yield Dispatch(name, {}, "SUCCESS", 0)


def _image(rng: random.Random, stamp_ms: int) -> Dispatch:
    size = rng.choice(IMAGE_SIZES)
    output_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    kwargs = {
        "input_image": {"protocol": "file", "path": f"input/{stamp_ms}-{size}.jpg"},
        "output_image": {"protocol": "file", "path": f"output/{output_id}.jpg"},
        "lifespan": LIFESPAN,
    }
    return Dispatch("blurit.image", kwargs, "SUCCESS", 0)


def _fetch(rng: random.Random) -> Dispatch:
    fail_times = rng.choice(FETCH_FAILURES)
    bucket = rng.choice(("media-eu", "media-us", "archive"))
    url = f"https://{bucket}.storage.example/{rng.getrandbits(48):012x}.jpg"
    return Dispatch("blurit.fetch", {"url": url, "fail_times": fail_times}, "SUCCESS", fail_times)


def _probe(rng: random.Random) -> Dispatch:
    if rng.random() < CORRUPT_UPLOAD_RATE:
        # A proxy error page stored in place of the upload: a classic corrupt file.
        request_id = f"{rng.getrandbits(64):016x}"
        payload = (
            "<html><head><title>502 Bad Gateway</title></head>"
            f"<body>upstream timed out, request {request_id}</body></html>"
        ).encode()
        return Dispatch("blurit.probe", {"payload_b64": _b64(payload)}, "FAILURE", 0)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format="PNG")
    return Dispatch("blurit.probe", {"payload_b64": _b64(buffer.getvalue())}, "SUCCESS", 0)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
