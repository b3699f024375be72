"""`python -m planner` runs the same command line as `meshplan`."""

from cli import app

app(prog_name="meshplan")
