"""The GPU-side benchmark helpers, on CPU: the sync audit's attribution of a sync to a repository line,
its refusal without CUDA, and benchmark children keeping the caller's PYTHONPATH (a GPU host's extra
site directory: the first H200 run lost every child section to a replaced PYTHONPATH)."""

from __future__ import annotations

import os
import subprocess
import traceback
from types import SimpleNamespace

import pytest
import torch

from benchmarks import cuda_syncs, perf_attacks_common


def _frame(path, line: int, name: str) -> traceback.FrameSummary:
    return traceback.FrameSummary(str(path), line, name)


def test_repo_frame_names_the_innermost_library_line():
    stack = [_frame(cuda_syncs.REPO / "benchmarks" / "cuda_syncs.py", 10, "main"),
             _frame(cuda_syncs.REPO / "adv2core" / "attacks" / "pgd.py", 42, "forward"),
             _frame(cuda_syncs.REPO / "adv2core" / "attacks" / "result.py", 73, "reasons"),
             _frame("/usr/lib/python3/site-packages/torch/_tensor.py", 5, "item")]
    assert cuda_syncs.repo_frame(stack) == "adv2core/attacks/result.py:73 (reasons)"


def test_repo_frame_outside_the_library_skips_the_warning_machinery():
    stack = [_frame("/elsewhere/user.py", 7, "caller"), _frame("/usr/lib/python3.12/warnings.py", 109, "_showwarnmsg")]
    assert cuda_syncs.repo_frame(stack) == "/elsewhere/user.py:7 (caller)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_sync_audit_refuses_without_cuda(capsys):
    assert cuda_syncs.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a GPU" in err[0]


def test_benchmark_children_keep_the_callers_pythonpath(monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw["env"])
        return SimpleNamespace(returncode=0, stdout='{"ok": 1}\n', stderr="")

    monkeypatch.setenv("PYTHONPATH", "/opt/extra-site")
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert perf_attacks_common.spawn({"mode": "count"}) == {"ok": 1}
    parts = seen["PYTHONPATH"].split(os.pathsep)
    assert parts == [str(perf_attacks_common.REPO), "/opt/extra-site"]


def test_benchmark_children_without_a_pythonpath_get_the_repo(monkeypatch):
    seen = {}
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: (seen.update(kw["env"]),
                        SimpleNamespace(returncode=0, stdout="{}\n", stderr=""))[1])
    perf_attacks_common.spawn({"mode": "count"})
    assert seen["PYTHONPATH"] == str(perf_attacks_common.REPO)
