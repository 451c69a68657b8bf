"""Fail when a page of the documentation is missing from the built HTML or empty.

Usage::

    python doc/check_pages.py BUILD_DIR

``BUILD_DIR`` is the output of ``sphinx -b html``. The pages checked are every
entry of a ``toctree`` directive (and of an ``autosummary`` with a
``:toctree:`` option) in the sources that Sphinx copies to
``BUILD_DIR/_sources``, and every document of Sphinx's search index. Each must
have its ``.html`` file, its first heading must be the title Sphinx recorded
for it (a page overwritten by another one, as ``search.html`` by Sphinx's own
search page, has another title), and its main content must hold text besides
that heading. A cross-reference (``:ref:``) may not lead to Sphinx's search
page: ``search`` is Sphinx's own label, so a ``:ref:`... <search>``` meant
for a user-guide page opens an empty search box. Exit status 1 and one line
per failing page otherwise.
"""

import argparse
import json
import posixpath
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

_SEARCH_PAGE_REF = re.compile(
    r'href="((?:\.\./)*search\.html[^"]*)"[^>]*>\s*<span class="std std-ref">'
)
_DIRECTIVE = re.compile(r"^(\s*)\.\. (toctree|autosummary|currentmodule|module)::(.*)$")


def _indented_block(lines, start, indent):
    """The lines after ``start`` indented deeper than ``indent`` (or blank)."""
    block = []
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
            break
        block.append(line.strip())
    return block


def toctree_entries(source, docname):
    """Docnames named by the toctrees of one source file (rst text)."""
    lines, module, entries = source.splitlines(), "", []
    folder = posixpath.dirname(docname)
    for number, line in enumerate(lines):
        match = _DIRECTIVE.match(line)
        if match is None:
            continue
        indent, kind, argument = match.groups()
        if kind in ("currentmodule", "module"):
            module = argument.strip()
            continue
        block = _indented_block(lines, number, indent)
        options = [b for b in block if b.startswith(":")]
        names = [b for b in block if b and not b.startswith(":")]
        if kind == "autosummary":
            prefix = next(
                (o.split(":", 2)[2].strip() for o in options if o[1:8] == "toctree"),
                None,
            )
            if prefix is None:
                continue
            qualified = (f"{module}.{n}" if module else n for n in names)
            names = [posixpath.join(prefix, n.lstrip("~")) for n in qualified]
        for name in names:
            target = re.search(r"<([^<>]+)>$", name)
            name = target.group(1) if target else name
            if name == "self" or "://" in name or name.startswith("glob"):
                continue
            if name.startswith("/"):
                entries.append(posixpath.normpath(name.lstrip("/")))
            else:
                entries.append(posixpath.normpath(posixpath.join(folder, name)))
    return entries


def recorded_titles(build):
    """Docname -> title, from Sphinx's search index."""
    text = (build / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(text[text.index("(") + 1 : text.rindex(")")])
    return dict(zip(index["docnames"], index["titles"]))


_VOID = {"br", "hr", "img", "input", "link", "meta", "area", "base", "col", "wbr"}


class _MainText(HTMLParser):
    """Collects the first heading and the text of a page's main content."""

    def __init__(self, container):
        super().__init__()
        self.container = container
        self.depth, self.skipped_at, self.heading_at = 0, None, None
        self.heading, self.heading_parts, self.text = None, [], []

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        attrs = dict(attrs)
        if not self.depth:
            self.depth = int(self.heading is None and tag == self.container)
            return
        self.depth += 1
        if self.skipped_at is None and (
            tag in ("script", "style", "nav", "form")
            or "headerlink" in (attrs.get("class") or "")
        ):
            self.skipped_at = self.depth
        elif tag == "h1" and self.heading is None and self.heading_at is None:
            self.heading_at = self.depth

    def handle_endtag(self, tag):
        if not self.depth or tag in _VOID:
            return
        if self.depth == self.skipped_at:
            self.skipped_at = None
        if self.depth == self.heading_at:
            self.heading_at = None
            self.heading = " ".join("".join(self.heading_parts).split())
        self.depth -= 1

    def handle_data(self, data):
        if not self.depth or self.skipped_at is not None:
            return
        if self.heading_at is not None:
            self.heading_parts.append(data)
        elif self.heading is not None and data.strip():
            self.text.append(data.strip())


def page_problem(build, docname, title):
    """Why the page of ``docname`` is missing or empty, or None."""
    path = build / f"{docname}.html"
    if not path.is_file():
        return "missing from the HTML"
    html = path.read_text(encoding="utf-8")
    # The article of the pydata theme, else the main element (the article
    # alone leaves out the theme's previous/next links).
    page = _MainText("article" if "<article" in html else "main")
    page.feed(html)
    if page.heading is None:
        return "has no heading in its main content"
    if title is not None and page.heading != " ".join(title.split()):
        return f"shows {page.heading!r}, not its title {title!r} (overwritten?)"
    if not page.text:
        return "has no body text"
    return None


def check(build):
    """The failing pages of the HTML build in ``build``, as messages."""
    build = Path(build)
    if not (build / "searchindex.js").is_file():
        return [f"{build}: not a Sphinx HTML build (no searchindex.js)"]
    titles = recorded_titles(build)
    named = {}
    for source in sorted((build / "_sources").rglob("*.txt")):
        docname = source.relative_to(build / "_sources").as_posix()
        docname = docname.rsplit(".", 2)[0]
        for entry in toctree_entries(source.read_text(encoding="utf-8"), docname):
            named.setdefault(entry, docname)
    failures = []
    for docname in sorted(set(named) | set(titles)):
        problem = page_problem(build, docname, titles.get(docname))
        if problem is not None:
            where = f" (in the toctree of {named[docname]})" if docname in named else ""
            failures.append(f"{docname}.html{where}: {problem}")
    for docname in sorted(titles):
        path = build / f"{docname}.html"
        if not path.is_file():
            continue
        for href in _SEARCH_PAGE_REF.findall(path.read_text(encoding="utf-8")):
            failures.append(
                f"{docname}.html: a cross-reference leads to Sphinx's search page "
                f"({href}); the label 'search' is Sphinx's own"
            )
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", help="directory of the HTML build")
    args = parser.parse_args(argv)
    failures = check(args.build)
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        print(f"{len(failures)} problem(s) in the built pages.", file=sys.stderr)
        return 1
    print("Every page of the toctrees is in the HTML, with its title and text.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
