"""Imports every command module of this package so each registers itself on the app.

Add a line here for a new module; each module decorates `meshplan_cli.common.app`.
"""
import meshplan_cli.cache_cmd  # noqa: F401
import meshplan_cli.capacity_cmd  # noqa: F401
import meshplan_cli.export_cmd  # noqa: F401
import meshplan_cli.placement_cmd  # noqa: F401
import meshplan_cli.separation_cmd  # noqa: F401
