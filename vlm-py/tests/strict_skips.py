"""pytest plugin (``-p strict_skips``, run.sh loads it): under ``VLM_REQUIRE_ALL_TESTS=1``
(.ci/run), where every optional package and file the tests use is installed, a skipped
test fails, so a missing one cannot pass unnoticed. A skip that depends on the machine's
load rather than on what is installed is marked ``skip_allowed``."""

import os

import pytest


def _strict():
    return os.environ.get("VLM_REQUIRE_ALL_TESTS") == "1"


def _reason(report):
    longrepr = report.longrepr
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return longrepr[2]
    return str(longrepr)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "skip_allowed(why): a skip of this test is fine even under VLM_REQUIRE_ALL_TESTS=1",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _strict() and report.skipped and item.get_closest_marker("skip_allowed") is None:
        report.outcome = "failed"
        report.longrepr = f"VLM_REQUIRE_ALL_TESTS=1, but the test was skipped: {_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module-level importorskip skips the whole file at collection.
    outcome = yield
    report = outcome.get_result()
    if _strict() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"VLM_REQUIRE_ALL_TESTS=1, but {collector.nodeid} was skipped: {_reason(report)}"
