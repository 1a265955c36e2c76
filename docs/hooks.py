"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml; not part of the package).

* The index page is README.md itself, so that the two never drift apart: :func:`on_files` adds it
  to the site as ``index.md``. README's links are relative to the repository root
  (``docs/design.md``, ``docs/results/seed-gpu/prior_samples.png``); under ``docs/`` the same
  targets are ``design.md`` and ``results/...``, so the ``docs/`` prefix of each link target is
  dropped. A link to a file or folder of the repository outside docs/ (``examples/``), which
  the site does not have, becomes its plain text; a link to a path that does not exist is left
  as it is, and the strict build reports it.
* The pages link to folders of run records (``results/fast-gpu/``), which GitHub shows as a file
  list but a static site does not have: :func:`on_files` adds a listing page (``index.md``) to
  each folder under docs/ that holds no Markdown page, and :func:`on_page_markdown` points the
  links to such a folder at its listing page, so that they are checked and work from a server
  and from ``file://`` alike. The Markdown sources are not changed.
* :class:`SphinxDocstrings`, a griffe extension (``extensions:`` of the mkdocstrings handler in
  mkdocs.yml), reads the parts of the docstrings that are written for Sphinx: the roles
  (``:class:`~problayers.StandardNormal```, ``:func:`evaluate```) become links to the API pages
  where the target is documented there and code elsewhere; ``Example::`` is a Google
  ``Example:`` section (reST's ``::`` marker dropped); ``#:`` comments above a module
  attribute are its docstring; a class whose docstring is written at import time (the
  convolutions of ``problayers.layers.convolutional``) gets that docstring.
"""

from __future__ import annotations

import importlib
import inspect
import posixpath
import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File, Files, InclusionLevel

# ``](docs/...)`` in inline links and images, and ``[label]: docs/...`` reference definitions.
_README_INLINE = re.compile(r"(\]\(\s*<?)docs/")
_README_REFERENCE = re.compile(r"^(\s{0,3}\[[^\]]+\]:\s*<?)docs/", re.MULTILINE)
# An inline link (not an image): its label and target.
_README_OUTSIDE = re.compile(r"(?<!!)\[([^\]]*)\]\(\s*<?([^)\s>]+)>?\s*\)")
# An inline link target that ends with "/" (a folder), optionally with an anchor.
_FOLDER_LINK = re.compile(r"(\]\()([^)\s:#]*/)(#[^)\s]*)?(\))")

_listed_folders: set[str] = set()  # docs-relative POSIX paths of the folders given a listing page


def readme_as_index(text: str, repo: Path) -> str:
    """README's Markdown with its link targets made relative to docs/ instead of the repo root;
    a link to a file or folder of the repository outside docs/ (not on the site) becomes its text."""

    def outside_docs(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        path = target.split("#", 1)[0]
        if not path or "://" in target or path.startswith(("docs/", "/", "mailto:")):
            return match.group(0)
        return label if (repo / path).exists() else match.group(0)  # a broken link stays, and fails

    text = _README_OUTSIDE.sub(outside_docs, text)
    return _README_REFERENCE.sub(r"\1", _README_INLINE.sub(r"\1", text))


def _listing(folder: Path, rel: str) -> str:
    """The Markdown of a folder's listing page: its subfolders and files, each a link."""
    lines = [f"# {rel}/", "", "Run records kept with the documentation:", ""]
    for entry in sorted(folder.iterdir(), key=lambda p: (p.is_file(), p.name)):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            lines.append(f"* [{entry.name}/]({entry.name}/index.md)")
        else:
            lines.append(f"* [{entry.name}]({entry.name})")
    lines += ["", "[Up](../index.md)", ""]
    return "\n".join(lines)


def on_files(files: Files, config) -> Files:
    docs_dir = Path(config["docs_dir"])
    readme = Path(config["config_file_path"]).parent / "README.md"
    existing = files.get_file_from_path("index.md")
    if existing is not None:  # a hand-written docs/index.md would shadow README: README wins
        files.remove(existing)
    files.append(
        File.generated(config, "index.md", content=readme_as_index(readme.read_text("utf-8"), readme.parent))
    )

    _listed_folders.clear()
    for folder in sorted(p for p in docs_dir.rglob("*") if p.is_dir()):
        rel = folder.relative_to(docs_dir).as_posix()
        if rel.startswith(".") or "/." in rel or "__pycache__" in rel:
            continue
        if any(folder.rglob("*.md")) or (folder / "index.html").exists():
            continue  # a folder of pages (docs/api), not of records
        _listed_folders.add(rel)
        files.append(
            File.generated(
                config, f"{rel}/index.md", content=_listing(folder, rel), inclusion=InclusionLevel.NOT_IN_NAV
            )
        )
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    page_dir = posixpath.dirname(page.file.src_uri)

    def to_listing(match: re.Match) -> str:
        target = match.group(2)
        folder = posixpath.normpath(posixpath.join(page_dir, target))
        if folder not in _listed_folders:
            return match.group(0)
        return f"{match.group(1)}{target}index.md{match.group(3) or ''}{match.group(4)}"

    return _FOLDER_LINK.sub(to_listing, markdown)


# ---------------------------------------------------------------- the griffe extension

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(~?)([\w.]+)`")
# reST's literal-block marker: "Example::" (a Google "Example:" section, its doctest highlighted)
# and "text::" (the code block that follows is already one in Markdown).
_LITERAL_MARKER = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)


def _walk(obj):
    """The objects of a loaded package, aliases (re-exports) left out."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias and (
            member.is_module or member.is_class or member.is_function or member.is_attribute
        ):
            yield from _walk(member)


def _target(obj, name: str) -> str:
    """The full path that ``name`` (as written in ``obj``'s docstring) names."""
    if name.startswith("problayers"):
        return name
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except Exception:
        path = f"{obj.module.path}.{head}"
    return f"{path}.{rest}" if rest else path


class SphinxDocstrings(griffe.Extension):
    """Sphinx roles as cross-references, ``#:`` attribute comments and runtime docstrings."""

    def on_package(self, *, pkg, **kwargs) -> None:
        parser = pkg.docstring.parser if pkg.docstring else None
        options = pkg.docstring.parser_options if pkg.docstring else {}
        for obj in _walk(pkg):
            if obj.docstring is None:
                text = self._runtime_docstring(obj) if obj.is_class else self._comment_docstring(obj)
                if text:
                    obj.docstring = griffe.Docstring(
                        text, parent=obj, lineno=obj.lineno, parser=parser, parser_options=options
                    )
            if obj.docstring is not None:
                text = _LITERAL_MARKER.sub(r"\1:", obj.docstring.value)
                obj.docstring.value = _ROLE.sub(lambda m, o=obj: self._autoref(o, m), text)

    @staticmethod
    def _autoref(obj, match: re.Match) -> str:
        short, name = match.group(1), match.group(2)
        title = name.rsplit(".", 1)[-1] if short else name
        return f'<autoref identifier="{_target(obj, name)}" optional><code>{title}</code></autoref>'

    @staticmethod
    def _runtime_docstring(cls) -> str | None:
        if cls.name.startswith("_") or "__main__" in cls.module.path.split("."):
            return None  # only public classes; never import an entry point (it would run)
        try:
            value = getattr(importlib.import_module(cls.module.path), cls.name)
        except Exception:
            return None
        doc = value.__dict__.get("__doc__") if isinstance(value, type) else None
        return inspect.cleandoc(doc) if doc else None

    @staticmethod
    def _comment_docstring(attr) -> str | None:
        if not attr.is_attribute or not attr.parent or not attr.parent.is_module or not attr.lineno:
            return None
        lines = attr.parent.lines
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the assignment, 0-based
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.insert(0, lines[index].lstrip()[2:].strip())
            index -= 1
        return " ".join(comment) or None
