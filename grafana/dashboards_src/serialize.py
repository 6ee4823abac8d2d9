"""Between the SDK's models and Grafana's JSON."""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard


def to_dict(model: dashboard.Dashboard) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    for link in data.get("links") or []:
        # The SDK (0.0.21) writes every link with placement "inControlsMenu", its only value,
        # which current Grafana renders inside the dashboard-controls menu, dropping links of
        # type "dashboards" or with asDropdown. Without the key, links sit in the top bar.
        link.pop("placement", None)
    return data


def round_trip(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` parsed into the SDK's models and written back.

    The models keep only the keys Grafana's schema knows, so a misspelt key comes back missing.
    """
    return to_dict(dashboard.Dashboard.from_json(data))
