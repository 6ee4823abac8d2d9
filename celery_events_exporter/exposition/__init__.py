"""Exposition: the metric catalogue, the state rendered as metric families, the page writer."""
