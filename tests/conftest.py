import pytest


@pytest.fixture(autouse=True)
def _model_cache(tmp_path_factory, monkeypatch):
    """Keep stored models of the test run in one temporary cache, shared across tests."""
    monkeypatch.setenv("TUNERD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tunerd-cache"))
