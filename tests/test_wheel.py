"""errands as a user installs it: `python -m build`, the wheel into a fresh virtual
environment, then its own command runs a job end to end against the test database.

The wheel is built from the sdist (`python -m build` does so), so both must carry what
errands reads at run time: the migrations, the SQL, the dashboard's templates and static
files. The fresh environment has no pip of its own: the test's pip installs into it
(`pip --python`), from the indexes pip is configured with, and nothing of the checkout
is on its path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from errands.harness.process import free_port
from errands.harness.waiting import answers, wait_for
from tests.examples import ROOT

pytestmark = pytest.mark.slow

VERSION = metadata.version("errands")
# What errands opens at run time, besides its modules.
DATA = (
    "errands/queue/sql/queries.sql",
    "errands/schema/migrations/0001_jobs.sql",
    "errands/api/ui/templates/schedules.html",
    "errands/api/ui/static/app.css",
    "errands/py.typed",
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed, and nothing else of errands."""
    env = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    [wheel] = dist.glob("errands-*.whl")
    pip = [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python")]
    run([*pip, "install", "--quiet", "--disable-pip-version-check", str(wheel)])
    return env


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def test_the_sdist_and_the_wheel_carry_the_sql_templates_and_static_files(dist: Path) -> None:
    [sdist] = dist.glob("errands-*.tar.gz")
    [wheel] = dist.glob("errands-*.whl")
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    assert sdist.name == f"errands-{VERSION}.tar.gz"
    assert not [path for path in DATA if path not in in_sdist or path not in in_wheel]
    assert not [name for name in in_wheel if name.split("/")[0] in {"tests", "bench", "chaos"}]


def test_the_installed_wheel_runs_a_job_end_to_end(
    venv: Path, empty_db_url: str, tmp_path: Path
) -> None:
    errands = str(venv / "bin" / "errands")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")},
        "ERRANDS_DATABASE_URL": empty_db_url,
        "ERRANDS_LOG_FORMAT": "json",
        "PYTHONPATH": "",
    }
    python = str(venv / "bin" / "python")
    where = run([python, "-c", "import errands; print(errands.__file__)"], env=env, cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout  # not the checkout's
    assert run([errands, "--version"], env=env).stdout == f"errands, version {VERSION}\n"
    assert "applied 0001_jobs" in run([errands, "migrate"], env=env, cwd=tmp_path).stdout

    port = free_port()
    daemon_env = {**env, "ERRANDS_HTTP_ADDR": f"127.0.0.1:{port}", "ERRANDS_WORKERS": "1"}
    with (tmp_path / "run.log").open("w") as log:
        daemon = subprocess.Popen(
            [errands, "run"], env=daemon_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/ready"), timeout=60, what="the installed errands run")
        submitted = run(
            [errands, "enqueue", "send_email", '{"to": "a@example.com"}', "--json"], env=env
        )
        job_id = json.loads(submitted.stdout)["id"]

        def completed() -> dict[str, object] | None:
            shown = json.loads(
                run([errands, "jobs", "show", str(job_id), "--json"], env=env).stdout
            )
            return shown if shown["state"] == "completed" else None

        job = wait_for(completed, timeout=30, what="the job to complete")
        assert job["result"] == {
            "to": "a@example.com",
            "delivered": True,
            "message_id": job["result"]["message_id"],
        }  # type: ignore[index]
        assert httpx.get(f"{base}/ui/schedules").status_code == 200  # the templates
        assert "table" in httpx.get(f"{base}/ui/static/app.css").text  # the static files
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
    assert code == 0, (tmp_path / "run.log").read_text()
