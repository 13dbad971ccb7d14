import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests use tiny models: one intra-op thread per process is as fast on a quiet 2-core
# machine and far faster when processes share the cores (subprocesses inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from rlfoundry.models import build_tokenizer

    return build_tokenizer()

