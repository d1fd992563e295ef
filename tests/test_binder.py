"""Binder: a fresh virtualenv from binder/requirements.txt, binder/postBuild, then every
example notebook executed there (papermill --engine flowbook) against a fresh datastore.

The venv build downloads nothing that pip's cache already holds; still it takes
2-4 minutes on two cores, so it runs only when asked for: ``pytest -m slow
tests/test_binder.py`` (or FLOWBOOK_TEST_BINDER=1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_USER

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"


def notebook_order(names: list[str]) -> list[str]:
    """Alphabetical, except that a notebook runs after the one it reads (train, predict)."""
    order = sorted(names)
    if "wine_predict.ipynb" in order and "wine_train.ipynb" in order:
        order.remove("wine_predict.ipynb")
        order.insert(order.index("wine_train.ipynb") + 1, "wine_predict.ipynb")
    return order


def _checkout(target: Path) -> None:
    """The files a clone of the repository has (tracked and new, nothing ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _asked_for(config: pytest.Config) -> bool:
    expression = config.getoption("markexpr") or ""
    return os.environ.get("FLOWBOOK_TEST_BINDER") == "1" or (
        "slow" in expression and "not slow" not in expression
    )


def test_notebook_order_puts_a_reader_after_its_writer():
    names = ["wine_predict.ipynb", "hello.ipynb", "wine_train.ipynb", "tags.ipynb"]
    assert notebook_order(names) == [
        "hello.ipynb",
        "tags.ipynb",
        "wine_train.ipynb",
        "wine_predict.ipynb",
    ]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_binder_environment_runs_every_notebook(tmp_path, request):
    if not _asked_for(request.config):
        pytest.skip("slow (a fresh venv): run with -m slow or FLOWBOOK_TEST_BINDER=1")
    assert os.access(BINDER / "postBuild", os.X_OK), "binder/postBuild must be executable"
    repo = tmp_path / "repo"
    _checkout(repo)
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(venv)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBOOK_", "METAFLOW_"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        FLOWBOOK_DATASTORE=str(tmp_path / "datastore"),
        USER=TEST_USER,
    )
    python = str(venv / "bin" / "python")
    # as repo2docker does: from the repository's root
    _run([python, "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"], cwd=repo, env=env)
    built = _run([str(repo / "binder" / "postBuild")], cwd=repo, env=env)
    assert "papermill engine 'flowbook' registered" in built.stdout
    overrides = venv / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert overrides.is_file()

    notebooks = notebook_order([p.name for p in (repo / "notebooks").glob("*.ipynb")])
    assert notebooks.index("wine_train.ipynb") < notebooks.index("wine_predict.ipynb")
    work = tmp_path / "work"
    work.mkdir()
    for name in notebooks:
        shutil.copy(repo / "notebooks" / name, work / name)
        _run(
            [python, "-m", "papermill", "--no-progress-bar", "--engine", "flowbook"]
            + [name, f"out_{name}"],
            cwd=work,
            env=env,
            timeout=600,
        )
    # every notebook ended with a successful run of its flow, in the temporary datastore
    import flowbook.client as client

    client.datastore(str(tmp_path / "datastore"))
    client.namespace(None)
    try:
        for flow_name in (
            "HelloFlow",
            "CounterBranchFlow",
            "ForeachFlow",
            "ParameterFlow",
            "TagsFlow",
            "ClassifierTrainFlow",
            "ClassifierPredictFlow",
        ):
            assert client.Flow(flow_name).latest_run.successful, flow_name
        assert client.Flow("ClassifierPredictFlow").latest_run.data.prediction == 0
    finally:
        client.datastore(None)
        client.default_namespace()
