"""Shared fixtures for the fl/ workload tests: generated site stores and real Flower messages."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import Message, Metadata, RecordDict

from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.store import append_generated_batch, batch_paths

BATCHES = 3
ROWS = 1000

# The SuperLink's own node id: instruction messages come from it.
SUPERLINK_NODE_ID = 1


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The models are tiny: one intra-op thread is as fast, and does not fight other work for 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """Console scripts (flwr, flower-superlink) of the interpreter running the tests."""
    return Path(sys.executable).parent


@pytest.fixture(scope="session")
def site_stores(tmp_path_factory) -> dict[str, Path]:
    """One store per registered site with BATCHES batches of ROWS rows, written by the store's own writer.

    Read-only for the tests that use it: a test that changes a store makes its own with ``make_store``.
    """
    root = tmp_path_factory.mktemp("stores")
    stores = {}
    for name, profile in SITES.items():
        store = root / name
        for _ in range(BATCHES):
            append_generated_batch(store, profile, rows=ROWS)
        stores[name] = store
    return stores


@pytest.fixture(scope="session")
def stored_batches(site_stores) -> dict[str, list[pd.DataFrame]]:
    """site -> its batches as read back from the CSV files, oldest first."""
    return {site: [pd.read_csv(p) for p in batch_paths(store)] for site, store in site_stores.items()}


@pytest.fixture
def make_store(tmp_path):
    """make_store(site, batches, rows=ROWS) -> a fresh store under tmp_path holding that many generated batches."""

    def make(site: str, batches: int, rows: int = ROWS) -> Path:
        store = tmp_path / "data" / site
        store.mkdir(parents=True, exist_ok=True)
        for _ in range(batches):
            append_generated_batch(store, SITES[site], rows=rows)
        return store

    return make


_message_ids = itertools.count(1)


@pytest.fixture
def instruction():
    """instruction(content, node_id, message_type) -> a Message as a SuperNode receives it from the SuperLink.

    Built from explicit Metadata, as Flower's runtime does: ``Message(content, dst_node_id, message_type)``
    needs the identity of a running ServerApp process.
    """

    def make(content: RecordDict, node_id: int, message_type: str, group_id: str = "1") -> Message:
        metadata = Metadata(
            run_id=42,
            message_id=f"msg-{next(_message_ids)}",
            src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=node_id,
            reply_to_message_id="",
            group_id=group_id,
            created_at=time.time(),
            ttl=3600.0,
            message_type=message_type,
        )
        return Message(metadata=metadata, content=content)

    return make
