"""`python -m planner` runs the same command line as `meshplan`."""

from cli import run

run()
