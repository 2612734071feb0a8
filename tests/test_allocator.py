"""The allocator settings keep a process's large buffers instead of faulting them in anew.

A receiver builds a bytearray and a bytes copy of every HTTP body piece (uvicorn); with
glibc's defaults each piece is fresh memory whose pages fault on first write. The check runs
that pattern in a fresh interpreter, with and without ``tune_allocator``, and counts the
page faults (``ru_minflt``): the measurable effect, not the call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from secret_sharing import allocator

PATTERN = r"""
import json, os, resource, sys
sys.path.insert(0, {root!r})
from secret_sharing.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tuned" else False
piece = os.urandom(256 * 1024)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
start = faults()
for _ in range(300):
    body = bytearray()
    body += piece
    body += piece[:100_000]
    copy = bytes(body)
    del body, copy
print(json.dumps({{"tuned": tuned, "faults_per_piece": (faults() - start) / 300}}))
"""


def run_pattern(mode: str, **env: str) -> dict:
    root = str(Path(allocator.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", PATTERN.format(root=root), mode],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_process_reuses_its_buffers_instead_of_faulting_them_in():
    plain = run_pattern("plain")
    tuned = run_pattern("tuned")
    assert tuned["tuned"] is True
    # glibc's defaults: ~70 faults per piece (its 350 KB of fresh pages); tuned: about none.
    assert plain["faults_per_piece"] > 20, plain
    assert tuned["faults_per_piece"] < 5, tuned


def test_tuning_can_be_switched_off():
    assert run_pattern("tuned", ENCLAVE_MALLOC_TUNING="0")["tuned"] is False


def test_every_process_on_the_data_path_tunes_itself():
    """The CLI (receivers, split, send), the service (worker) and the validation pool."""
    import inspect

    from enclave import cli
    from ingestion import pipeline, service
    from ingestion.validators import dicom

    assert "tune_allocator()" in inspect.getsource(cli.main)
    assert "tune_allocator()" in inspect.getsource(service.IngestService.__post_init__)
    assert "initializer=prepare_pool_process" in inspect.getsource(pipeline.StreamingIngest)
    assert "initializer=prepare_pool_process" in inspect.getsource(dicom.validate_dicom_files)
    assert "tune_allocator()" in inspect.getsource(dicom.prepare_pool_process)


def test_an_uninitialized_bytearray_has_the_length_asked_for_and_takes_writes():
    buffer = allocator.uninitialized_bytearray(5 * 1024 * 1024)
    assert type(buffer) is bytearray and len(buffer) == 5 * 1024 * 1024
    buffer[:] = b"\x07" * len(buffer)
    assert buffer.count(7) == len(buffer)
    assert allocator.uninitialized_bytearray(0) == bytearray()


def test_a_negative_buffer_length_is_refused():
    with pytest.raises(ValueError, match="-1 bytes"):
        allocator.uninitialized_bytearray(-1)
