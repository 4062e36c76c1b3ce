"""MkDocs hooks: the pages that are generated from the code and from the benchmarks' results files.

A page asks for generated text with an HTML comment on a line of its own:

- `<!-- cli: train -->`: the flags of `python -m recsys.train`, read from its argparse parser;
- `<!-- http -->`: the HTTP API, from the service's OpenAPI schema;
- `<!-- results: peers -->`: every table of `benchmarks/results/peers.json` ("not yet measured" without it),
  `<!-- results: peers/ml-100k-folds -->` the table of that id;
- `<!-- chart: peers/time-to-quality.png -->`: a picture drawn from that file at build time.

The functions are importable (tests/test_docs.py compares the pages with the parsers and the results files).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import importlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLIS = ("train", "infer", "evaluate", "serve", "synthetic")
MARKER = re.compile(r"^<!-- (cli|http|results|chart)(?::\s*(\S+))? -->$", re.M)


class _Parser(BaseException):
    """Raised from inside a CLI's `main` with the parser it built, before it parses anything."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser(name: str) -> argparse.ArgumentParser:
    """The argparse parser `python -m recsys.NAME` builds: its `main` runs up to the first parse and stops there."""
    module = importlib.import_module(f"recsys.{name}")

    def stop(self, *args, **kwargs):
        raise _Parser(self)

    saved = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = stop
    try:
        module.main([])
    except _Parser as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_known_args = saved
    raise RuntimeError(f"recsys.{name}.main parsed no arguments")


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split())).replace("|", "\\|")


def cli_markdown(name: str) -> str:
    """One CLI's reference: its description, usage and a table of every flag with its default and help."""
    ap = parser(name)
    formatter = ap._get_formatter()
    out = [f"## `python -m recsys.{name}`", "", _cell(ap.description or "").replace("\\|", "|"), ""]
    usage = ap.format_usage().removeprefix("usage: ").strip()
    out += ["```text", usage, "```", ""]
    for group in ap._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        actions = [a for a in actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        out += [f"**{_cell(group.title or '')}**", "", "| flag | default | what |", "|---|---|---|"]
        for action in actions:
            flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
            if action.choices:
                flags += " `{" + ",".join(str(c) for c in action.choices) + "}`"
            default = action.default
            hidden = default in (None, False, argparse.SUPPRESS) or not action.option_strings
            helptext = formatter._expand_help(action) if action.help else ""
            out.append(f"| {flags} | {'' if hidden else f'`{default}`'} | {_cell(helptext)} |")
        out.append("")
    return "\n".join(out) + "\n"


def option_strings(name: str) -> set[str]:
    """Every flag a CLI's parser takes (what `--help` lists)."""
    return {s for a in parser(name)._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


@functools.cache
def openapi() -> dict:
    """The service's OpenAPI schema, as served by a small retrieval model of a synthetic ml-1m-layout archive
    with a ratings database (the schema's constraints come from the served data)."""
    from recsys import synthetic, train
    from recsys.service.api import create_app

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        synthetic.write_ml1m(tmp, 3000, seed=1)
        model = Path(tmp) / "retrieval.model"
        train.run(data_dir=tmp, objective="retrieval", model_dir=model, epochs=1, max_batches=2, log=lambda _: None)
        return create_app(model, ratings_db=Path(tmp) / "ratings.db", write_token="x").openapi()


def _schema(schema: dict, spec: dict) -> str:
    """A parameter's or body's schema in a few words (type, bounds, enum, or the name it refers to)."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_schema(s, spec) for s in schema["anyOf"])
    words = [schema.get("type", "")]
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in schema:
            words.append(f"{sign} {schema[key]}")
    if "enum" in schema:
        words.append("one of " + ", ".join(str(v) for v in schema["enum"]))
    if schema.get("type") == "array" and "items" in schema:
        words.append("of " + _schema(schema["items"], spec))
    return " ".join(w for w in words if w)


def _properties(schema: dict, spec: dict) -> list[str]:
    """A body schema's fields as a table (a `$ref` looked up in the schema's components)."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    fields = schema.get("properties", {})
    if not fields:
        return []
    required = set(schema.get("required", []))
    out = ["| field | required | schema | what |", "|---|---|---|---|"]
    for name, field in fields.items():
        out.append(
            f"| `{name}` | {'yes' if name in required else 'no'} | {_cell(_schema(field, spec))} | "
            f"{_cell(field.get('description', ''))} |"
        )
    return [*out, ""]


def http_markdown(spec: dict | None = None) -> str:
    """Every operation of the OpenAPI schema: its parameters, request body and the statuses it answers."""
    spec = spec or openapi()
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            out += [f"### `{method.upper()} {path}`", ""]
            if op.get("summary") or op.get("description"):
                out += [" ".join((op.get("description") or op["summary"]).split()), ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | required | schema | what |", "|---|---|---|---|---|"]
                for p in params:
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                        f"{_cell(_schema(p.get('schema', {}), spec))} | {_cell(p.get('description', ''))} |"
                    )
                out.append("")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                out += [f"Request body (`{media}`): {_cell(_schema(content.get('schema', {}), spec))}", ""]
                out += _properties(content.get("schema", {}), spec)
            out += ["| status | what |", "|---|---|"]
            for status, answer in op.get("responses", {}).items():
                out.append(f"| {status} | {_cell(answer.get('description', ''))} |")
            out.append("")
    return "\n".join(out)


def _number(value, decimals: int | None = None) -> str:
    """A results file's value as its page shows it (floats with the table's decimals for their column)."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and decimals is not None:
        return f"{value:,.{decimals}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def load_results(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def results_markdown(name: str) -> str:
    """The tables of one results file (`NAME`: all of them; `NAME/ID`: the one of that id), each under its title,
    with the command and the run that wrote them."""
    name, _, table_id = name.partition("/")
    doc = load_results(name)
    if doc is None:
        return f"*Not yet measured: `benchmarks/results/{name}.json` is written by `make bench`.*\n"
    out = []
    for i, table in enumerate(doc["tables"]):
        if table_id and table.get("id") != table_id:
            continue
        out += [f"<!-- results {name}/{i} -->", "", f"**{_cell(table['title'])}**", ""]
        out += ["| " + " | ".join(_cell(c) for c in table["columns"]) + " |"]
        out += ["|" + "---|" * len(table["columns"])]
        decimals = table.get("decimals") or [None] * len(table["columns"])
        out += ["| " + " | ".join(_cell(_number(v, d)) for v, d in zip(row, decimals)) + " |" for row in table["rows"]]
        out.append("")
    out.append(f"From `benchmarks/results/{name}.json`: {doc['source']}; {doc['machine']}; {doc['measured']}.")
    if doc.get("note"):
        out.append(doc["note"])
    return "\n".join(out) + "\n"


def charts() -> dict[str, bytes]:
    """Every picture of every results file, drawn now, by its site path (`benchmarks/charts/NAME/FILE.png`)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import charts as drawing
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = {}
    for name in drawing.CHARTS:
        doc = load_results(name)
        if doc is not None:
            for filename, png in drawing.draw(name, doc).items():
                out[f"benchmarks/charts/{name}/{filename}"] = png
    return out


def expand(markdown: str, page_path: str = "") -> str:
    """A page's markdown with every marker replaced by its generated text."""
    drawn = None

    def replace(m: re.Match) -> str:
        nonlocal drawn
        kind, arg = m.group(1), m.group(2)
        if kind == "cli":
            return cli_markdown(arg)
        if kind == "http":
            return http_markdown()
        if kind == "results":
            return results_markdown(arg)
        drawn = charts() if drawn is None else drawn
        name, filename = arg.split("/", 1)
        target = f"benchmarks/charts/{name}/{filename}"
        if target not in drawn:
            return f"*No picture yet: `benchmarks/results/{name}.json` is written by `make bench`.*\n"
        depth = page_path.count("/")
        return f"![{filename[:-4]}]({'../' * depth}{target})\n"

    return MARKER.sub(replace, markdown)


# ---- MkDocs events ----


def on_files(files, config):
    """The generated pictures and the OpenAPI schema, added to the site as files."""
    from mkdocs.structure.files import File

    for path, png in charts().items():
        files.append(File.generated(config, path, content=png))
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(openapi(), indent=1)))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand(markdown, page.file.src_uri)
