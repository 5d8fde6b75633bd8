"""The test harness itself: `make test` relies on pytest-xdist's loadgroup to run each shared sweep
once, on one worker (tests/conftest.py). pytest 9.2 renamed the attribute xdist 3.8 writes the group
into, which silently spread every sweep's tests over both workers and ran each sweep twice."""
import pytest


@pytest.fixture(scope="module")
def shared():
    return object()


def test_tests_sharing_a_module_fixture_are_one_xdist_group(request, shared):
    if getattr(request.config, "workerinput", None) is None or not request.config.getvalue("loadgroup"):
        pytest.skip("only under pytest-xdist with --dist loadgroup (make test)")
    assert request.node.nodeid.endswith("@tests/test_harness.py::shared"), request.node.nodeid
