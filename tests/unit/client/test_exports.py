"""``llem_client``'s public names: ``__all__``, the lazy-import table and the type-checking
imports list the same names, and each lazy name is found where the table says."""

from __future__ import annotations

import ast
import importlib
import inspect

import llem_client

EAGER = {"SCHEMA_VERSION", "__version__"}  # imported at once: cheap and needed by --help


def _type_checking_imports() -> set[str]:
    tree = ast.parse(inspect.getsource(llem_client))
    guarded = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    assert len(guarded) == 1
    return {
        alias.asname or alias.name
        for node in ast.walk(guarded[0])
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_all_the_lazy_table_and_the_type_checking_imports_agree() -> None:
    lazy = set(llem_client._LAZY)

    assert len(llem_client.__all__) == len(set(llem_client.__all__)), "a name is listed twice"
    assert set(llem_client.__all__) == lazy | EAGER
    assert _type_checking_imports() == lazy


def test_each_lazy_name_comes_from_the_module_the_table_names() -> None:
    for name, module in llem_client._LAZY.items():
        expected = getattr(importlib.import_module(f"llem_client.{module}"), name)
        assert getattr(llem_client, name) is expected, name
