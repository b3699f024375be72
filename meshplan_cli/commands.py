"""Imports every command module of this package so each registers itself on the app.

Add a line here for a new module; each module decorates `meshplan_cli.common.app`.
"""
