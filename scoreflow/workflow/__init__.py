"""Workflow runtime: operators, parsing and validation of generated workflows, sandboxed execution."""
