"""Data that crosses the workflow boundary: workflow inputs, activity inputs and results,
one module a feature.

Dataclasses only, so Temporal's default converter stores them, and new optional fields can
be added without breaking running workflows. Nothing here may hold a customer's email or
name: these objects are written into workflow histories.

Annotations here are evaluated, not strings (no `from __future__ import annotations`), and a
class comes after those it names: inside the workflow sandbox, Temporal's converter resolves
string annotations through the sandbox's own sys.modules, which lacks a submodule the
workflow did not import itself.
"""
