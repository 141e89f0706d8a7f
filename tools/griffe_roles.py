"""Griffe extension for the docs: Sphinx roles in docstrings become cross-references.

The docstrings name objects with Sphinx roles (``:func:`fit```, ``:class:`RvqEncoder```,
``:mod:`viva_glyph.train.kmeans```), which mkdocstrings does not read. This extension
rewrites each role into an *optional* autorefs link: a link where the name resolves to a
documented object (looked up in the docstring's own scope first: the object, its parent,
its module, then the package), plain code elsewhere, never a broken reference.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`([^`]+)`")
TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$")


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package into an autorefs link."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(
                    lambda m, obj=obj: _link(m.group(1), obj, loader), obj.docstring.value
                )


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias and member.parent is obj:
            found += _walk(member)  # type: ignore[arg-type]
    return found


def _link(text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    titled = TITLED.match(text)
    target = titled["target"] if titled else text
    shown = target.lstrip("~!")
    target = shown
    if titled:
        shown = titled["title"]
    elif text.startswith("~"):
        shown = target.rsplit(".", 1)[-1]
    scopes = [obj.path, *(p.path for p in _parents(obj)), obj.package.path]
    for scope in scopes:
        path = target if target.startswith(obj.package.path + ".") else f"{scope}.{target}"
        try:
            loader.modules_collection[path]
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return (
            f'<autoref identifier="{html.escape(path)}" optional>'
            f"<code>{html.escape(shown)}</code></autoref>"
        )
    return f"`{shown}`"


def _parents(obj: griffe.Object) -> list[griffe.Object]:
    out = []
    while obj.parent is not None:
        obj = obj.parent
        out.append(obj)
    return out
