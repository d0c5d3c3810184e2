"""prefect.yaml deploys to a local server and the scheduler creates the nightly runs (opt-in).

Opt-in (``ADV2_DEPLOY_TEST=1``): it starts a real ``prefect server start`` with its scheduler service,
which takes 10-30 s here. It runs exactly the commands of docs/pipeline.md "Scheduled runs".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")

opt_in = pytest.mark.skipif(os.environ.get("ADV2_DEPLOY_TEST") != "1", reason="opt-in: set ADV2_DEPLOY_TEST=1")


def test_prefect_yaml_is_explicit():
    """Cheap checks that always hold: explicit pull, one cron deployment, two on-demand ones, one pool."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["pull"], "pull must be set explicitly"
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {"nightly-quick", "paper", "isic"}
    assert [s["cron"] for s in deps["nightly-quick"]["schedules"]] == ["0 2 * * *"]
    assert not deps["paper"]["schedules"] and not deps["isic"]["schedules"]
    assert {d["parameters"]["preset"] for d in deps.values()} == {"quick", "paper", "isic"}
    assert {d["work_pool"]["name"] for d in deps.values()} == {"adv2-process"}
    for d in deps.values():
        path, name = d["entrypoint"].split(":")
        assert (REPO / path).is_file() and f"def {name}(" in (REPO / path).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "prefect server exited"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("prefect server did not start")


@pytest.mark.deploy
@opt_in
def test_deploy_creates_scheduled_runs(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        # the scheduler normally wakes every 60 s; the test cannot wait that long
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    }
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=env, stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_health(url, server)

        def prefect(*args: str) -> str:
            out = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
            return out.stdout

        prefect("work-pool", "create", "adv2-process", "--type", "process")
        prefect("deploy", "--all", "--no-prompt")
        listing = prefect("deployment", "ls")
        for name in ("nightly-quick", "paper", "isic"):
            assert name in listing

        code = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
with get_client(sync_client=True) as c:
    out = {}
    for d in c.read_deployments():
        runs = c.read_flow_runs(
            deployment_filter=DeploymentFilter(id={"any_": [d.id]}),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))),
        )
        out[d.name] = {"runs": len(runs), "schedules": len(d.schedules), "pull": d.pull_steps,
                       "params": d.parameters, "pool": d.work_pool_name}
    print(json.dumps(out))
"""
        deadline = time.monotonic() + 90
        while True:
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            info = json.loads(res.stdout.strip().splitlines()[-1])
            if info["nightly-quick"]["runs"] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert info["nightly-quick"]["runs"] >= 1, f"no scheduled runs were created: {info}"
        assert info["nightly-quick"]["schedules"] == 1 and info["nightly-quick"]["params"]["preset"] == "quick"
        for name in ("paper", "isic"):
            assert info[name]["schedules"] == 0 and info[name]["runs"] == 0
        for d in info.values():
            assert d["pool"] == "adv2-process"
            assert d["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $ADV2_REPO }}"}}]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
