import pytest


@pytest.fixture(autouse=True)
def _model_cache(tmp_path_factory, monkeypatch):
    """Keep stored models of the test run in one temporary cache, shared across tests."""
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tunerd-cache"))


@pytest.fixture
def fake_sysfs(tmp_path):
    """Factory for fake sysfs trees in tmp_path; returns the directory to use as sysfs root.

    ``fake_sysfs("hikey970")`` (any board in tunerd.platform.fakesysfs.BOARDS, or a FakeBoard; ``online=``
    takes CPUs offline) or ``fake_sysfs("emulate:big=0@1.0,little=1@0.5", max_khz=2_000_000)``.
    """
    import itertools

    from tunerd.platform.fakesysfs import make_emulated_tree, make_tree

    count = itertools.count()

    def make(what, **kwargs):
        root = tmp_path / f"fakefs{next(count)}"
        if isinstance(what, str) and what.startswith("emulate:"):
            return make_emulated_tree(what, root, **kwargs)
        return make_tree(what, root, **kwargs)

    return make
