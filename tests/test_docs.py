"""The README and the documentation site: short, built offline with `--strict`, loading nothing from off the
machine, generated references that match the code, results pages that match their files, paths that exist,
and every block marked runnable run as written."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ROOT, free_port, get_json, run_cli
from docblocks import Block, block, blocks, documents

BIN = Path(sys.executable).parent
# every block marked `runnable: NAME`, and the test that runs it
NAMED = {
    "quickstart": "tests/test_docs.py::test_the_readme_quick_start_runs_offline_as_written",
    "quickstart-python": "tests/test_docs.py::test_the_readme_quick_start_runs_offline_as_written",
    "use": "tests/test_use.py::test_the_use_block_as_written",
    "python": "tests/test_library.py::test_the_python_block_as_written",
    "ratings-in": "tests/test_feedback.py::test_the_readmes_loop_runs_as_written",
}


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `make docs` builds it (`mkdocs build --strict`), into a temp folder."""
    pytest.importorskip("mkdocs", reason="the docs packages are not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _text(page: Path, pre: bool = True) -> str:
    """A built page's article as plain text (without its preformatted blocks where `pre` is false)."""
    doc = page.read_text()
    article = doc[doc.index("<article") : doc.index("</article>")]
    article = article if pre else re.sub(r"<pre\b.*?</pre>", " ", article, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", article))


def test_the_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert 0 < lines <= 200, lines


def test_the_built_site_loads_nothing_from_off_the_machine(site):
    """No script, style sheet, font, image or frame from an outside URL (outbound links in prose are fine)."""
    outside = re.compile(
        r"<(?:script|img|iframe|source|embed)\b[^>]*\ssrc=[\"']?(?:https?:)?//"
        r"|<link\b[^>]*\shref=[\"']?(?:https?:)?//"
        r"|@import\s+(?:url\()?[\"']?(?:https?:)?//"
        r"|url\(\s*[\"']?(?:https?:)?//",
        re.I,
    )
    pages = sorted(site.rglob("*.html")) + sorted(site.rglob("*.css"))
    assert len(pages) > 20
    found = [(p.relative_to(site), m.group(0)) for p in pages for m in outside.finditer(p.read_text())]
    assert not found, found[:10]
    assert "fonts.googleapis" not in (site / "index.html").read_text()


def test_the_cli_reference_lists_every_flag_that_help_prints(site):
    page = _text(site / "reference" / "cli" / "index.html", pre=False)  # the tables, not the usage lines
    sections = re.split(r"python -m recsys\.(\w+)\s*¶", page)
    documented = {sections[i]: sections[i + 1] for i in range(1, len(sections) - 1, 2)}
    hooks = _hooks()
    assert set(documented) == set(hooks.CLIS)
    for name in hooks.CLIS:
        helped = run_cli(f"recsys.{name}", "--help")
        assert helped.returncode == 0, helped.stderr
        printed = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", helped.stdout.split("options:", 1)[1]))
        listed = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", documented[name]))
        assert printed - {"-h", "--help"} <= listed, (name, printed - listed)
        assert hooks.option_strings(name) - {"-h", "--help"} <= printed, name


def test_the_api_reference_documents_recommender_and_train_run(site):
    page = (site / "reference" / "python" / "index.html").read_text()
    for anchor in ("Recommender", "train.run", "Recommender.recommend", "Recommender.load"):
        assert f'id="recsys.{"recommender." if "Recommender" in anchor else ""}{anchor}"' in page, anchor
    text = _text(site / "reference" / "python" / "index.html")
    from recsys import recommender, train

    for doc in (recommender.Recommender.recommend_many.__doc__, train.run.__doc__):
        assert " ".join(doc.replace("`", "").split()[:8]) in " ".join(text.split()), doc[:80]


def test_the_http_reference_lists_every_operation_of_the_schema(site):
    spec = json.loads((site / "reference" / "openapi.json").read_text())
    text = " ".join(_text(site / "reference" / "http" / "index.html").split())
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert f"{method.upper()} {path}" in text
            for status in op["responses"]:
                assert status in text


class _Tables(HTMLParser):
    """The tables of a page, each after the `results NAME/I` comment before it: {"NAME/I": [[cell, ...], ...]}."""

    def __init__(self):
        super().__init__()
        self.tables, self.label, self.row, self.cell = {}, None, None, None

    def handle_comment(self, data):
        m = re.fullmatch(r" results (\S+) ", data)
        if m:
            self.label = m.group(1)

    def handle_starttag(self, tag, attrs):
        if tag == "table" and self.label:
            self.tables[self.label] = []
        elif tag == "tr" and self.label in self.tables:
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append(" ".join(self.cell.split()))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables[self.label].append(self.row)
            self.row = None
        elif tag == "table":
            self.label = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def _same(cell: str, value, decimals: int | None = None) -> bool:
    """A table cell as the page shows it, against its value in the results file (a float at its column's
    `decimals`, where the table gives them)."""
    if value is None:
        return cell == "–"
    if isinstance(value, str):
        return cell == " ".join(value.split())
    if isinstance(value, float) and decimals is not None:
        return cell == f"{value:,.{decimals}f}"
    return float(cell.replace(",", "")) == value


def test_every_figure_on_the_results_pages_is_its_json(site):
    """Each results file's tables are on the site, cell for cell, and each picture is drawn from the file."""
    results = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert results, "no results files"
    tables = {}
    for page in sorted((site / "benchmarks").rglob("index.html")):
        parser = _Tables()
        parser.feed(page.read_text())
        tables |= parser.tables
    for path in results:
        doc = json.loads(path.read_text())
        for i, table in enumerate(doc["tables"]):
            shown = tables[f"{doc['name']}/{i}"]
            assert shown[0] == [" ".join(c.split()) for c in table["columns"]], (path.name, i)
            assert len(shown) == len(table["rows"]) + 1, (path.name, i)
            decimals = table.get("decimals") or [None] * len(table["columns"])
            for cells, row in zip(shown[1:], table["rows"]):
                for cell, value, places in zip(cells, row, decimals, strict=True):
                    assert _same(cell, value, places), (path.name, i, cell, value)
    peers = json.loads((ROOT / "benchmarks" / "results" / "peers.json").read_text())
    mean = next(t for t in peers["tables"] if t["id"] == "ml-100k-mean")
    readme = (ROOT / "README.md").read_text().split("## Results beside the peers", 1)[1]
    rows = [line.strip("|").split("|") for line in readme.splitlines() if line.startswith("| ") and "---" not in line]
    by_label = {row[0]: row[1:] for row in mean["rows"]}
    assert len(rows) > 5
    for label, *cells in rows[1:]:
        want = by_label[label.replace("`", "").strip()]
        got = [float(c.replace("*", "").replace(" s", "").strip()) for c in cells]
        assert got == want[: len(got)], label
    charts = sorted(p.relative_to(site).as_posix() for p in (site / "benchmarks" / "charts").rglob("*.png"))
    assert "benchmarks/charts/peers/time-to-quality.png" in charts


def test_a_results_page_without_its_file_says_not_yet_measured():
    hooks = _hooks()
    assert "Not yet measured" in hooks.results_markdown("no-such-benchmark")
    assert "No picture yet" in hooks.expand("<!-- chart: no-such-benchmark/x.png -->")


def test_every_backticked_path_exists():
    """A backticked word that names a file or folder of the repository (`recsys/...`, `docs/...`, a top-level
    file) must exist; so must every relative link of the README and the pages."""
    tops = ("recsys/", "tests/", "benchmarks/", "docs/", "notebooks/", ".ci/")
    missing = []
    for path in documents():
        text = path.read_text()
        for word in re.findall(r"`([^`\s]+)`", text):
            word = word.rstrip(":,.")
            if word.startswith(tops) and "*" not in word and "NAME" not in word and not (ROOT / word).exists():
                missing.append((path.name, word))
        for link in re.findall(r"\]\(([^)#\s]+)", text):
            generated = link == "openapi.json"  # the schema the HTTP page is generated from, added at build time
            if not re.match(r"\w+:", link) and not generated and not (path.parent / link).exists():
                if not (path.parent / link).with_suffix(".md").exists() and "charts" not in link:
                    missing.append((path.name, link))
    assert not missing, missing
    assert "`recsys/service/static/`" in (ROOT / "docs" / "guides" / "serving.md").read_text()


def test_every_named_block_has_its_test():
    named = {b.name for b in blocks() if b.name}
    assert named == set(NAMED), named ^ set(NAMED)
    for name, test in NAMED.items():
        file, function = test.split("::")
        assert f"def {function}(" in (ROOT / file).read_text(), test
        assert f'block("{name}")' in (ROOT / file).read_text() or f'marked("{name}")' in (ROOT / file).read_text()


@pytest.mark.parametrize("runnable", [b for b in blocks() if b.name is None], ids=lambda b: b.path.name)
def test_a_block_marked_runnable_runs_as_written(runnable: Block, tmp_path):
    command = [sys.executable, "-c", runnable.text] if runnable.language == "python" else ["bash", "-e", "-c"]
    if runnable.language != "python":
        command.append(runnable.text)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_readme_quick_start_runs_offline_as_written(tmp_path):
    """Both quick-start blocks in one empty folder, the venv activated as the first line says, downloads going
    to a closed port; the server is asked for two-stage lists, then stopped."""
    activate = BIN / "activate"
    if not activate.is_file():
        pytest.skip(f"the tests do not run inside a venv ({sys.executable})")
    lines = block("quickstart").commands()
    assert lines[0].split("#")[0].strip() == ". .venv/bin/activate", lines[0]
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    outputs = {}
    for line in lines[1:]:
        command = f". {activate} && " + line.split("#")[0].strip()
        if "recsys.serve" in command:
            port = free_port()
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            server = subprocess.Popen(["bash", "-c", f"{command} --port {port}"], cwd=tmp_path, env=env,
                                      start_new_session=True, **quiet)  # fmt: skip
            try:
                recs = get_json(f"http://127.0.0.1:{port}/api/users/1/recommendations?k=10")
            finally:
                os.killpg(server.pid, 15)
                server.wait(30)
            assert recs["stages"] == ["retrieval", "ranking"] and len(recs["recommendations"]) == 10
            continue
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, (line, proc.stderr[-2000:])
        outputs[line.split("#")[0].strip()] = proc.stdout
    predicted = next(out for cmd, out in outputs.items() if "--movie 783" in cmd)
    assert predicted.startswith('Predict Rating of user id 1 on movie "'), predicted
    two = next(out for cmd, out in outputs.items() if "--rerank" in cmd)
    assert "reordered by the ranking network" in two
    explained = next(out for cmd, out in outputs.items() if "--explain" in cmd)
    assert "because you rated" in explained, explained
    python = block("quickstart-python")
    proc = subprocess.run([sys.executable, "-c", python.text], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'stages': ['retrieval']" in proc.stdout and "'title':" in proc.stdout
    assert "'share':" in proc.stdout.splitlines()[-1], proc.stdout  # the reasons of the last line
    shutil.rmtree(tmp_path / "data")
