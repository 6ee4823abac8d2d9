"""Dashboard definitions (one module per dashboard) and the helpers they share."""

import warnings

with warnings.catch_warnings():
    # The SDK warns, while its modules load, that the classic (v1) dashboard schema and v2beta1
    # are deprecated in favour of v2. v2 needs Grafana's kubernetesDashboards feature; file
    # provisioning in every released Grafana reads v1, which is what we emit. Loading the SDK
    # modules once here keeps that noise out of every later import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import grafana_foundation_sdk.builders.common
    import grafana_foundation_sdk.builders.dashboard
    import grafana_foundation_sdk.builders.prometheus
    import grafana_foundation_sdk.builders.stat
    import grafana_foundation_sdk.builders.table
    import grafana_foundation_sdk.builders.text
    import grafana_foundation_sdk.builders.timeseries
    import grafana_foundation_sdk.models.dashboard  # noqa: F401
