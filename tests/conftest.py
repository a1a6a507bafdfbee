"""Suite-wide settings: one compute thread per test process.

The suite runs as two pytest-xdist workers on two cores. Letting each worker's torch (and every
subprocess it starts) spin up one thread per core makes them busy-wait on each other, which
slowed small runs by an order of magnitude; one thread each keeps both cores busy with work.
"""
import os
import shutil

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _same_numerics_for_every_test():
    """Each test starts with one thread and denormals kept, whatever the test before it set.

    Tests that compare an in-process run with a subprocess (resume after SIGKILL) need both to
    compute with the same thread count and denormal mode to get bitwise-equal weights.
    """
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, for _free_disk_after_passing_tests."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _free_disk_after_passing_tests(request):
    """Delete a passing test's tmp_path at once: training tests write 65 MB checkpoints, and keeping
    them all until the session ends (pytest's own clean-up time) took 4 GB of disk per run."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    report = getattr(request.node, "report_call", None)
    if folder is not None and report is not None and report.passed:
        shutil.rmtree(folder, ignore_errors=True)
