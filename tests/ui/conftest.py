"""The description of each host's page (tests/ui/harness.py ``describe``), made once per session
and shared by the test files that read it: the harness starts a subprocess per page."""
import pytest

from .runner import PAGES, run_harness


@pytest.fixture(scope="session", params=sorted(PAGES))
def described(request):
    return request.param, run_harness(request.param, "describe")
