"""The body a load test sends: the first rows of an ``.npz`` file, or random inputs shaped as the server
says the model takes them (``GET /v1/models``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from chipfit.errors import SpecError

__all__ = ["model_info", "request_body"]


def model_info(url: str, model: str, token: str | None = None) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise SpecError(f"cannot reach {url} ({exc}). Is `chipfit serve` running there?") from None
    if r.status_code != 200:
        raise SpecError(f"{url}/v1/models answered {r.status_code}: {r.text[:200]}")
    name = model.partition("@")[0]
    for m in r.json()["models"]:
        if m["name"] == name and m["active"]:
            return m  # type: ignore[no-any-return]
    raise SpecError(f"{url} does not serve '{name}'; it serves {sorted({m['name'] for m in r.json()['models']})}.")


def request_body(
    url: str, model: str, data: Path | None, rows: int, binary: bool, token: str | None = None
) -> tuple[bytes, str]:
    info = model_info(url, model, token)
    if data is not None:
        with np.load(data) as z:
            feeds = {i["name"]: z[i["name"]][:rows] for i in info["inputs"] if i["name"] in z.files}
        if len(feeds) != len(info["inputs"]):
            raise SpecError(f"--data {data} lacks some of the model's inputs {[i['name'] for i in info['inputs']]}.")
    else:
        rng = np.random.default_rng(0)
        feeds = {}
        for i in info["inputs"]:
            shape = [rows] + [d if isinstance(d, int) else 1 for d in i["shape"][1:]]
            feeds[i["name"]] = rng.standard_normal(shape).astype(i["dtype"])
    if binary:
        buf = io.BytesIO()
        np.savez(buf, **feeds)
        return buf.getvalue(), "application/x-npz"
    return orjson.dumps({"inputs": feeds}, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"
