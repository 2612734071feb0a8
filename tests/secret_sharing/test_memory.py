"""Splitting and combining stream: peak memory does not grow with the dataset."""

import json
import random
import subprocess
import sys
import textwrap

import pytest

from secret_sharing.format import MIB

CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from secret_sharing import combine_shares, generate_signing_key, split_dataset

    def peak_kib():
        # VmHWM is this process image's own peak; ru_maxrss would include the pytest
        # parent's resident pages at fork time, which Linux carries across exec.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise SystemExit("no VmHWM in /proc/self/status")

    source, work = Path(sys.argv[1]), Path(sys.argv[2])
    key = generate_signing_key()
    result = split_dataset(source, work / "outbox", k=3, n=5, signing_key=key)
    after_split = peak_kib()
    combined = combine_shares(result.share_paths[2:], work / "inbox", verify_key=key.public_key())
    print(json.dumps({
        "split_kib": after_split,
        "peak_kib": peak_kib(),
        "output": str(combined.output_path),
        "bytes_in": result.bytes_in,
    }))
    """
)


@pytest.mark.slow
def test_peak_memory_is_far_below_the_dataset_size(tmp_path):
    size = 200 * MIB
    source = tmp_path / "ct-volume.raw"
    rng = random.Random(42)
    with open(source, "wb") as handle:
        for _ in range(size // (4 * MIB)):
            handle.write(rng.randbytes(4 * MIB))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["bytes_in"] > size
    peak_mib = report["peak_kib"] / 1024
    # interpreter + crypto stack is ~40 MiB; a handful of 4 MiB segments in flight on top
    assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB for a {size // MIB} MiB dataset"
    with open(report["output"], "rb") as rebuilt, open(source, "rb") as original:
        while True:
            a, b = rebuilt.read(8 * MIB), original.read(8 * MIB)
            assert a == b
            if not a:
                break
