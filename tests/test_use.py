"""A first hour with recsys: the Use block of docs/usage.md as written, the commands outside the venv, mistyped data
folders, --resume, ages, recorded data paths, and what the commands leave in the working folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import HEAD, ROOT, assert_one_line_error, free_port, get_json, need_ml1m_meta, run_cli
from docblocks import block

from recsys import synthetic
from recsys.modeldir import ModelDir

BIN = Path(sys.executable).parent


def _use_block() -> list[str]:
    """The command lines of the block marked `runnable: use` (docs/usage.md), comments and blank lines left out."""
    return block("use").commands()


def test_the_use_block_as_written(tmp_path):
    """Every line of the block runs in a fresh folder with the venv activated as the block says, the archive
    in the default data home (as a download would leave it); the folder is then clean for git, and `make clean`
    removes what the commands wrote."""
    activate = BIN / "activate"
    if not activate.is_file():
        pytest.skip(f"the tests do not run inside a venv ({sys.executable})")
    lines = _use_block()
    assert lines[0].split("#")[0].strip() == ". .venv/bin/activate", lines[0]
    home = tmp_path / "home"
    synthetic.write_ml1m(home, 10_000, seed=3, meta_dir=need_ml1m_meta(), head=HEAD)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / ".gitignore", work / ".gitignore")
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    env = {**os.environ, "RECSYS_DATA_HOME": str(home), "PATH": "/usr/bin:/bin"}  # no venv on PATH until activated
    prefix = f". {activate} && "
    outputs = {}
    for line in lines[1:]:
        command = line.split("#")[0].strip()
        if "recsys.serve" in command:  # runs until stopped: ask it something, then stop it
            port = free_port()
            server = subprocess.Popen(["bash", "-c", f"{prefix}exec {command} --port {port}"], cwd=work, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                health = get_json(f"http://127.0.0.1:{port}/api/health")
                recs = get_json(f"http://127.0.0.1:{port}/api/users/1/recommendations?k=10")
            finally:
                server.terminate()
                server.wait(30)
            assert health["model"]["objective"] == "retrieval" and health["rerank"]["objective"] == "ranking"
            assert recs["stages"] == ["retrieval", "ranking"] and len(recs["recommendations"]) == 10
            continue
        proc = subprocess.run(["bash", "-c", prefix + command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        outputs[command] = proc.stdout
    predicted = outputs["python -m recsys.infer --user 1 --movie 783"]
    assert predicted.startswith('Predict Rating of user id 1 on movie "Hunchback of Notre Dame, The" is ')
    assert 'Actual Rating of user id 1 on movie "Hunchback of Notre Dame, The" is 4.' in predicted
    top = json.loads(outputs["python -m recsys.infer --user 1 --top-k 10 --json"])
    assert len(top["recommendations"]) == 10 and all(r["genres"] for r in top["recommendations"])
    assert ModelDir.load(work / "recommender_system.inference.model").meta["settings"]["epochs"] == 25
    assert (
        "(F, age 25–34, job 4: college/grad student)"
        in outputs["python -m recsys.infer --gender F --age 30 --job 4 --top-k 10"]
    )
    rated = [line for cmd, out in outputs.items() if "--rated 1193:5,661:3" in cmd for line in out.splitlines()]
    assert "reordered by the ranking network" in rated[0] and len(rated) == 11  # a header and ten movies
    assert not any(f" {m}  " in line for line in rated[1:] for m in (1193, 661))  # the rated movies are not in it
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=work, capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    assert status == ["??", ".gitignore"], status
    models = ["quick.model", "ranking.model", "recommender_system.inference.model", "retrieval.model"]
    assert sorted(p.name for p in work.iterdir()) == [".git", ".gitignore", *models]
    subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "clean", "VENV=.no-venv"], cwd=work, check=True)
    assert sorted(p.name for p in work.iterdir()) == [".git", ".gitignore"]


@pytest.fixture(scope="module")
def blocked(tmp_path_factory) -> dict[str, str]:
    """PYTHONPATH folders that make `import paddle` (or the serve extra) fail as if it were not installed."""
    out = {}
    for what, names in (("paddle", ["paddle"]), ("serve", ["fastapi", "uvicorn"])):
        folder = tmp_path_factory.mktemp(f"no-{what}")
        for name in names:
            (folder / f"{name}.py").write_text(
                f'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n'
            )
        out[what] = str(folder)
    return out


def test_every_entry_point_without_paddle_is_one_line_naming_the_install(blocked, trained, small_dir, tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([blocked["paddle"], str(ROOT)])}
    model = ["--model-dir", str(trained)]
    commands = [
        ["recsys.train", "--data-dir", str(small_dir), "--model-dir", str(tmp_path / "new")],
        ["recsys.infer", *model, "--user", "1", "--movie", "5"],
        ["recsys.evaluate", *model, "--data-dir", str(small_dir)],
        ["recsys.serve", *model, "--port", str(free_port())],
    ]
    for args in commands:
        proc = run_cli(*args, env=env)
        assert_one_line_error(proc, "Paddle is not installed for", sys.executable, '`pip install -e ".[cpu]"`')
        assert ". .venv/bin/activate" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "new").exists()
    scripts = [BIN / "recsys-train", BIN / "recsys-infer", BIN / "recsys-evaluate", BIN / "recsys-serve"]
    if not all(s.is_file() for s in scripts):
        pytest.skip("the console scripts are not installed beside this Python")
    for script, args in zip(scripts, commands):
        proc = subprocess.run([str(script), *args[1:]], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=300)  # fmt: skip
        assert_one_line_error(proc, "Paddle is not installed for", '`pip install -e ".[cpu]"`')


def test_serve_without_its_extra_is_one_line_naming_the_install(blocked, trained):
    env = {"PYTHONPATH": os.pathsep.join([blocked["serve"], str(ROOT)])}
    proc = run_cli("recsys.serve", "--model-dir", str(trained), env=env)
    assert_one_line_error(proc, "uvicorn is not installed for", '`pip install -e ".[serve]"`')


def test_a_mistyped_data_dir_is_one_error_and_creates_nothing(tmp_path, trained):
    typo = tmp_path / "no" / "such" / "dir"
    for command in (
        ["recsys.train", "--model-dir", str(tmp_path / "m")],
        ["recsys.evaluate", "--model-dir", str(trained)],
    ):
        proc = run_cli(*command, "--data-dir", str(typo))
        assert_one_line_error(proc, f"--data-dir {typo} does not exist", "leave --data-dir out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _costs(model: Path) -> list[tuple[float, float]]:
    return [(m["train_cost"], m["test_cost"]) for m in json.loads((model / "metrics.json").read_text())]


def test_resume_alone_continues_the_recorded_run_and_epochs_extend_it(small_dir, tmp_path):
    """Trained from one folder with a relative --data-dir; resumed from another with only --resume, where the
    default data home is empty (a download would fail)."""
    data, here, elsewhere = tmp_path / "data", tmp_path / "here", tmp_path / "elsewhere"
    for d in (data, here, elsewhere):
        d.mkdir()
    shutil.copy(small_dir / "ml-1m.zip", data / "ml-1m.zip")
    model = tmp_path / "m"
    flags = ["--batch-size", "1024", "--seed", "3"]
    proc = run_cli("recsys.train", "--data-dir", "../data", "--model-dir", str(model), "--epochs", "2", *flags,
                   cwd=here)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert ModelDir.load(model).meta["source"] == str(data / "ml-1m.zip")  # absolute, not ../data
    again = run_cli("recsys.train", "--model-dir", str(model), "--resume", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert f"{model}: training already finished at epoch 2 (--resume --epochs N above 2 trains on)" in again.stdout
    longer = run_cli("recsys.train", "--model-dir", str(model), "--resume", "--epochs", "3", cwd=elsewhere)
    assert longer.returncode == 0, longer.stderr
    assert "notice" not in longer.stderr  # a constant learning rate: nothing to say
    # extending a constant-rate run is the run of that length from the start, bit for bit
    straight = tmp_path / "straight"
    proc = run_cli("recsys.train", "--data-dir", str(data), "--model-dir", str(straight), "--epochs", "3", *flags)
    assert proc.returncode == 0, proc.stderr
    assert _costs(model) == _costs(straight) and len(_costs(model)) == 3
    assert ModelDir.load(model).meta["settings"]["epochs"] == 3
    for given, needle in (
        (["--lr", "0.1"], "--lr 0.2 (not 0.1)"),
        (["--batch-size", "256", "--seed", "3"], "--batch-size 1024 (not 256); leave those flags out"),
        (["--epochs", "2"], "--epochs 3 (not 2: --epochs can only extend a run)"),
    ):
        proc = run_cli("recsys.train", "--model-dir", str(model), "--resume", *given, cwd=elsewhere)
        assert_one_line_error(proc, f"--resume continues the run in {model}, which was trained with", needle)


def test_extending_a_cosine_run_says_what_happens_to_the_schedule(small_dir, tmp_path):
    model = tmp_path / "m"
    flags = ["--data-dir", str(small_dir), "--model-dir", str(model), "--batch-size", "2048"]
    assert run_cli("recsys.train", *flags, "--epochs", "2", "--lr-schedule", "cosine").returncode == 0
    proc = run_cli("recsys.train", "--model-dir", str(model), "--resume", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    # epoch 2 of 2 ran at 0.5 * (1 + cos(pi/2)) = 0.5 of --lr; epoch 3 of 3 runs at 0.5 * (1 + cos(2 pi/3)) = 0.25
    assert (
        "notice: extending a cosine schedule from 2 to 3 epochs: from epoch 3 on it follows the 3-epoch curve, "
        "so the learning rate goes from 0.500 to 0.250 times --lr" in proc.stderr
    )
    md = ModelDir.load(model)
    assert md.meta["settings"]["lr_schedule"] == "cosine" and len(json.loads(md.files.read("metrics.json"))) == 3


def test_a_moved_archive_is_named_not_downloaded(small_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(small_dir / "ml-1m.zip", data / "ml-1m.zip")
    model = tmp_path / "m"
    proc = run_cli("recsys.train", "--data-dir", "data", "--model-dir", "m", "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_cli("recsys.evaluate", "--model-dir", str(model), cwd=elsewhere).returncode == 0
    (data / "ml-1m.zip").rename(tmp_path / "ml-1m.zip")
    moved = f"{model} was trained on {data / 'ml-1m.zip'}, which is no longer there (moved or deleted)"
    for command in (["recsys.evaluate"], ["recsys.train", "--resume", "--epochs", "2"]):
        proc = run_cli(*command, "--model-dir", str(model), cwd=elsewhere)
        assert_one_line_error(proc, moved, "with --data-dir")
    proc = run_cli("recsys.evaluate", "--model-dir", str(model), "--data-dir", str(tmp_path), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr


def test_a_trainer_leaves_nothing_but_its_model_dir(small_dir, tmp_path):
    model = tmp_path / "m"
    for epochs in ("1", "2"):  # the second run replaces a saved dir
        flags = ["--data-dir", str(small_dir), "--model-dir", str(model), "--epochs", epochs, "--batch-size", "4096"]
        assert run_cli("recsys.train", *flags).returncode == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_ages_in_years_map_to_the_chapters_buckets(trained):
    base = ["recsys.infer", "--model-dir", str(trained), "--gender", "F", "--job", "4", "--top-k", "5"]
    docs = {
        age: json.loads(run_cli(*base, "--age", age, "--json").stdout) for age in ("25", "30", "34", "35", "1", "17")
    }
    for same in (("25", "30", "34"), ("1", "17")):
        assert len({json.dumps(docs[a]["recommendations"]) for a in same}) == 1, same
    assert docs["30"]["recommendations"] != docs["35"]["recommendations"]
    assert docs["30"]["user"] == {"gender": "F", "age": 30, "age_group": "25–34", "job": 4}
    assert docs["17"]["user"]["age_group"] == "Under 18" and docs["35"]["user"]["age_group"] == "35–44"
    text = run_cli(*base, "--age", "56").stdout
    assert text.startswith(
        "Top 5 movies for a new user (F, age 56+, job 4: college/grad student) (score in 2*stars-5):"
    ), text


def test_the_package_builds_without_a_warning(tmp_path):
    """The wheel and the editable wheel, through setuptools' own build hooks, with warnings as errors."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} here; the build needs 77 or later (the dev extra has it)")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "recsys", tmp_path / "recsys", ignore=shutil.ignore_patterns("__pycache__"))
    hooks = "import setuptools.build_meta as b; b.build_wheel('out'); b.build_editable('out')"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", hooks], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "out" / "recsys-0.1.0-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
    assert {
        "recsys/service/static/index.html",
        "recsys/service/api.py",
        "recsys/serve.py",
        "recsys/recommender.py",
    } <= names
