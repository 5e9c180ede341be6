"""The rank-hash files are a test hook: a multi-process run writes them only when the
environment asks (tests/conftest.py does), never in production."""

from compressmamba.training import rank_hashes


def test_rank_hashes_only_when_asked_and_with_several_ranks(monkeypatch):
    monkeypatch.delenv(rank_hashes.ENV, raising=False)
    assert not rank_hashes.wanted(2)  # a production multi-process run
    monkeypatch.setenv(rank_hashes.ENV, "1")
    assert rank_hashes.wanted(2) and not rank_hashes.wanted(1)
    monkeypatch.setenv(rank_hashes.ENV, "0")
    assert not rank_hashes.wanted(8)
