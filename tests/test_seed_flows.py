"""The seeds' example flows run with the results Metaflow's documents show."""

from __future__ import annotations

import pytest
from conftest import FlowRunner, assert_refused, client_for, example_source, flow_source


def _texts(result, step: str) -> list[str]:
    return [m["text"] for m in result.task_lines() if m["step"] == step]


def test_helloworld(run_flow, client):
    result = run_flow(example_source("helloworld"), "run")
    assert result.returncode == 0, result
    assert "This is start step" in _texts(result, "start")
    assert "Hello World!" in _texts(result, "hello")
    assert "This is end step" in _texts(result, "end")
    assert client.Flow("HelloWorldFlow").latest_run.successful

    show = run_flow(None, "show")
    assert show.returncode == 0, show
    for doc in ("Starting point", "Just saying hi", "Finish line"):
        assert doc in show.stdout
    bare = run_flow(None)
    assert bare.returncode == 0, bare
    assert "HelloWorldFlow" in bare.stdout


def test_counter_flow(run_flow, client):
    result = run_flow(example_source("counter"), "run")
    assert result.returncode == 0, result
    assert "The count is 0 before incrementing" in _texts(result, "add")
    assert "The final count is 2" in _texts(result, "end")
    run = client.Flow("CounterFlow").latest_run
    assert run.data.count == 2
    assert run["start"].task.data.count == 0
    assert run["add"].task.data.count == 1
    end = run["end"].task
    dump = run_flow(None, "dump", f"{run.id}/end/{end.id}")
    assert dump.returncode == 0, dump
    assert "count" in dump.stdout and "int" in dump.stdout and " 2" in dump.stdout


def test_counter_branch_flow(run_flow, client):
    result = run_flow(example_source("counter_branch"), "run")
    assert result.returncode == 0, result
    assert "count from add_one 1" in _texts(result, "join")
    assert "count from add_two 2" in _texts(result, "join")
    assert "The creature is dog" in _texts(result, "end")
    assert "The final count is 2" in _texts(result, "end")
    run = client.Flow("CounterBranchFlow").latest_run
    assert (run.data.count, run.data.creature) == (2, "dog")


def test_counter_branch_helper_flow_merges_artifacts(run_flow, client):
    result = run_flow(example_source("counter_branch_helper"), "run")
    assert result.returncode == 0, result
    assert "The creature is dog" in _texts(result, "end")
    run = client.Flow("CounterBranchHelperFlow").latest_run
    assert (run.data.count, run.data.creature) == (2, "dog")
    assert "increment" not in run["end"].task


def test_foreach_flow(run_flow, client):
    result = run_flow(example_source("foreach"), "run")
    assert result.returncode == 0, result
    assert sorted(_texts(result, "analyze_creatures"))[:3] == [
        "Analyzing bird",
        "Analyzing dog",
        "Analyzing mouse",
    ]
    assert "mouse won!" in _texts(result, "end")
    run = client.Flow("ForeachFlow").latest_run
    assert run.data.best == "mouse"
    assert len(list(run["analyze_creatures"])) == 3


def test_wide_foreach_needs_max_num_splits(run_flow):
    result = run_flow(example_source("wide_foreach"), "run")
    assert_refused(result, "'start'", "1000", "--max-num-splits")


def test_wide_foreach_flow(run_flow, client):
    result = run_flow(example_source("wide_foreach"), "run", "--max-num-splits", "1000")
    assert result.returncode == 0, result
    assert "Total sum is 499500000" in _texts(result, "end")
    run = client.Flow("WideForeachFlow").latest_run
    assert run.data.total == 499500000
    assert len(list(run["multiply"])) == 1000


def test_parameter_flow(run_flow, client):
    result = run_flow(example_source("parameters"), "run", "--creature", "dog", "--count", "3")
    assert result.returncode == 0, result
    texts = _texts(result, "start")
    assert "dog is a string of 3 characters" in texts
    assert "Count is an integer: 3+1=4" in texts
    assert "Ratio is a <class 'NoneType'> whose value is None" in texts

    result = run_flow(None, "run", "--creature", "cat", "--ratio", "0.25")
    assert result.returncode == 0, result
    texts = _texts(result, "start")
    assert "cat is a string of 3 characters" in texts
    assert "Count is an integer: 1+1=2" in texts
    assert "Ratio is a <class 'float'> whose value is 0.25" in texts
    assert client.Flow("ParameterFlow").latest_run.data.animal == "cat"


def test_parameter_flow_requires_creature(run_flow, tmp_path):
    result = run_flow(example_source("parameters"), "run", "--count", "3")
    assert_refused(result, "'creature'")
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_parameter_flow_from_environment(run_flow):
    result = run_flow(
        example_source("parameters"),
        "run",
        env={"FLOWBOOK_RUN_CREATURE": "owl", "METAFLOW_RUN_COUNT": "5"},
    )
    assert result.returncode == 0, result
    texts = _texts(result, "start")
    assert "owl is a string of 3 characters" in texts
    assert "Count is an integer: 5+1=6" in texts


def test_json_parameter_flow(run_flow, client):
    result = run_flow(example_source("json_parameter"), "run")
    assert result.returncode == 0, result
    assert "key some value default" in _texts(result, "start")
    result = run_flow(None, "run", "--mapping", '{"mykey": "myvalue"}')
    assert result.returncode == 0, result
    assert "key mykey value myvalue" in _texts(result, "start")
    assert client.Flow("JSONParameterFlow").latest_run.data.mapping == {"mykey": "myvalue"}


def test_csv_file_flow(run_flow, client, tmp_path):
    (tmp_path / "test.csv").write_text("first,second\n1,2\n")
    result = run_flow(example_source("csv_file"), "run", "--csv", "test.csv")
    assert result.returncode == 0, result
    texts = _texts(result, "start")
    assert "row 0: ['first', 'second']" in texts
    assert "row 1: ['1', '2']" in texts
    (tmp_path / "test.csv").unlink()
    assert client.Flow("CSVFileFlow").latest_run.data.data == "first,second\n1,2\n"

    (tmp_path / "semi.csv").write_text("a;b\n")
    result = run_flow(None, "run", "--csv", "semi.csv", "--delimiter", ";")
    assert result.returncode == 0, result
    assert "row 0: ['a', 'b']" in _texts(result, "start")


# ---------------------------------------------------------------------- wine classifier
WINE_VECTOR = "[14.3,1.92,2.72,20.0,120.0,2.8,3.14,0.33,1.97,6.2,1.07,2.65,1280.0]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of ClassifierTrainFlow (each of its tasks imports scikit-learn: slow)."""
    runner = FlowRunner(tmp_path_factory.mktemp("wine"))
    result = runner("classifier_train", "run", filename="classifier_train.py")
    assert result.returncode == 0, result
    return runner, result


@pytest.fixture
def wine_client(trained, monkeypatch):
    with client_for(trained[0], monkeypatch) as fb_client:
        yield fb_client


def test_classifier_train_flow(trained, wine_client):
    client = wine_client
    _, result = trained
    assert "Scores:" in _texts(result, "end")
    scores = [t for t in _texts(result, "end") if t.startswith(("KNeighbors", "SVC"))]
    assert len(scores) == 2
    run = client.Flow("ClassifierTrainFlow").latest_run
    assert run.successful
    results = run.data.results
    assert [type(m).__name__ for m, _ in results][0] == type(run.data.model).__name__
    assert results[0][1] >= results[1][1]
    assert run["start"].task.data.train_data.shape == (142, 13)
    assert run["start"].task.data.test_data.shape == (36, 13)
    for step in ("train_knn", "train_svm"):
        model = run[step].task.data.model
        assert model.score(run["start"].task.data.test_data, run["start"].task.data.test_labels) > 0


def test_classifier_predict_flow_reads_the_model_with_the_client(trained, wine_client):
    client = wine_client
    run_flow, _ = trained
    result = run_flow(
        "classifier_predict", "run", "--vector", WINE_VECTOR, filename="classifier_predict.py"
    )
    assert result.returncode == 0, result
    assert "Predicted class 0" in _texts(result, "end")
    run = client.Flow("ClassifierPredictFlow").latest_run
    train_run = client.Flow("ClassifierTrainFlow").latest_run
    assert run.data.train_run_id == train_run.pathspec
    assert run.data.vector == [
        14.3,
        1.92,
        2.72,
        20.0,
        120.0,
        2.8,
        3.14,
        0.33,
        1.97,
        6.2,
        1.07,
        2.65,
        1280.0,
    ]
    assert type(run.data.model).__name__ == type(train_run.data.model).__name__


def test_classifier_predict_needs_a_vector(run_flow, tmp_path):
    result = run_flow("classifier_predict", "run", filename="classifier_predict.py")
    assert_refused(result, "'vector'")
    result = run_flow(None, "run", "--vector", "[1, 2", filename="classifier_predict.py")
    assert_refused(result, "'vector'", "JSON")
    assert not (tmp_path / ".flowbook" / "flows").exists()


def test_classifier_train_failure_is_found_with_the_client(run_flow, client):
    broken = flow_source("classifier_train").replace('kernel="poly"', 'kernel="polynomial"')
    result = run_flow(broken, "run", filename="classifier_train.py")
    assert result.returncode != 0, result
    assert "train_svm" in result.stderr
    failed = [
        task
        for step in client.Flow("ClassifierTrainFlow").latest_run
        for task in step
        if not task.successful
    ]
    assert [t.step_name for t in failed] == ["train_svm"]
    assert "polynomial" in failed[0].stderr
    assert "polynomial" in failed[0].exception
    logs = run_flow(
        None,
        "logs",
        "--stderr",
        failed[0].pathspec.split("/", 1)[1],
        filename="classifier_train.py",
    )
    assert logs.returncode == 0, logs
    assert "polynomial" in logs.stdout
