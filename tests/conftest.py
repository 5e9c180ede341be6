"""Test set-up. TRITON_INTERPRET must be set before any Triton kernel is defined, so this runs
before the package is imported anywhere in the suite."""

import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The DDP tests compare the ranks' parameter hashes: multi-process runs the tests start write them
# (training/rank_hashes.py); production runs do not.
os.environ.setdefault("COMPRESSMAMBA_RANK_HASHES", "1")
# Token stores built by tests (and by the training runs they start) go to a throw-away folder,
# never the user's cache; subprocesses inherit it.
_TOKEN_CACHE = tempfile.mkdtemp(prefix="compressmamba-test-cache-")
os.environ["COMPRESSMAMBA_CACHE"] = _TOKEN_CACHE

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TOKEN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
