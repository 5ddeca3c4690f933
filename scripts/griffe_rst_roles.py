"""A griffe extension for the API reference (mkdocs.yml): the docstrings' Sphinx markup as Markdown.

dsmd's docstrings name other objects the Sphinx way (``:class:`~dsmd.inference.Encoder```,
````code````); mkdocstrings renders Markdown, where those would show as written. Before the
docstrings are parsed, each role becomes a code span of the name and double backticks single
ones (:func:`dsmd.docs_reference.rst_to_markdown`, as on the generated config page). The source
files stay as they are.
"""

from __future__ import annotations

from typing import Any

import griffe

from dsmd.docs_reference import rst_to_markdown


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
