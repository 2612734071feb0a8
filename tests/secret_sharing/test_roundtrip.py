import io
import itertools
import os
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secret_sharing import (
    DatasetError,
    OutputExistsError,
    ShareParameterError,
    combine_shares,
    erasure,
    measure_dataset,
    read_share_info,
    split_dataset,
    verify_share,
)
from secret_sharing.format import MIB
from secret_sharing.packing import pack_segments

from .conftest import pseudo_random_bytes, tree_of, write_tree


@pytest.mark.parametrize("k,n", [(2, 2), (2, 3), (3, 4), (3, 5)])
def test_every_k_subset_rebuilds_the_study(
    tmp_path, radiology_study, split_transfer, provider_key, k, n
):
    transfer = split_transfer(radiology_study, k, n)
    expected = tree_of(radiology_study)
    for number, subset in enumerate(itertools.combinations(transfer.shares, k)):
        out = tmp_path / f"inbox-{number}"
        result = combine_shares(list(subset), out, verify_key=provider_key.public_key())
        assert result.output_path == out / "study-0042"
        assert tree_of(result.output_path) == expected
        assert result.used_shares == list(subset) and result.rejected == {}
        assert os.listdir(out) == ["study-0042"]  # no staging folder left


def test_every_subset_of_a_multi_segment_transfer(
    tmp_path, multi_segment_study, split_transfer, provider_key
):
    transfer = split_transfer(multi_segment_study, 2, 4)
    info = read_share_info(transfer.shares[0])
    assert info.manifest.segment_count == 3
    expected = tree_of(multi_segment_study)
    for number, subset in enumerate(itertools.combinations(transfer.shares, 2)):
        result = combine_shares(
            list(reversed(subset)), tmp_path / f"in-{number}", verify_key=provider_key.public_key()
        )
        assert tree_of(result.output_path) == expected


@pytest.mark.parametrize("engine", ["isa-l", "zfec"])
def test_every_subset_rebuilds_with_either_erasure_engine(
    tmp_path, monkeypatch, multi_segment_study, split_transfer, provider_key, engine
):
    """Shares split with ISA-L's parity decode with zfec, and the other way round."""
    if engine == "isa-l" and not erasure.isal_available():
        pytest.fail("ISA-L is missing: apt-get install libisal2 (make test does)", pytrace=False)
    monkeypatch.setenv(erasure.USE_ISAL_ENV, "0" if engine == "isa-l" else "1")
    erasure._isal.cache_clear()
    transfer = split_transfer(multi_segment_study, 3, 5)  # split by the other engine
    monkeypatch.setenv(erasure.USE_ISAL_ENV, "1" if engine == "isa-l" else "0")
    erasure._isal.cache_clear()
    try:
        assert erasure.ErasureDecoder(3, 5).engine == engine
        expected = tree_of(multi_segment_study)
        for number, subset in enumerate(itertools.combinations(transfer.shares, 3)):
            result = combine_shares(
                list(reversed(subset)),
                tmp_path / f"in-{number}",
                verify_key=provider_key.public_key(),
            )
            assert tree_of(result.output_path) == expected, subset
    finally:
        erasure._isal.cache_clear()


def test_more_than_k_shares_use_k(tmp_path, radiology_study, split_transfer, provider_key):
    transfer = split_transfer(radiology_study, 2, 4)
    result = combine_shares(transfer.shares, tmp_path / "in", verify_key=provider_key.public_key())
    assert len(result.used_shares) == 2
    assert tree_of(result.output_path) == tree_of(radiology_study)


def test_single_file_dataset(tmp_path, split_transfer, provider_key):
    source = tmp_path / "labs.csv"
    source.write_bytes(b"patient,value\n1,2\n")
    os.chmod(source, 0o640)
    transfer = split_transfer(source, 2, 3)
    info = read_share_info(transfer.shares[1])
    assert (info.dataset_name, info.dataset_kind, info.index) == ("labs.csv", "file", 2)
    result = combine_shares(
        transfer.shares[1:], tmp_path / "in", verify_key=provider_key.public_key()
    )
    assert result.output_path.read_bytes() == source.read_bytes()
    assert result.output_path.stat().st_mtime == int(source.stat().st_mtime)


def test_share_sizes_are_about_size_over_k(tmp_path, multi_segment_study, split_transfer):
    transfer = split_transfer(multi_segment_study, 3, 5)
    size = sum(p.stat().st_size for p in multi_segment_study.rglob("*") if p.is_file())
    for share in transfer.shares:
        assert size / 3 < share.stat().st_size < size / 3 + 64 * 1024
        assert share.stat().st_mode & 0o777 == 0o600


def test_share_info_without_key(radiology_study, split_transfer, provider_key):
    from secret_sharing import key_fingerprint

    transfer = split_transfer(radiology_study, 3, 5)
    info = read_share_info(transfer.shares[4])
    assert info.transfer_id == transfer.transfer_id and len(info.transfer_id) == 32
    assert (info.index, info.k, info.n) == (5, 3, 5)
    assert info.share_length == transfer.shares[4].stat().st_size
    assert info.signer_fingerprint == key_fingerprint(provider_key.public_key())
    assert verify_share(transfer.shares[4], provider_key.public_key()).index == 5


def test_tar_stream_is_what_tarfile_writes(radiology_study):
    """The packer's stream is byte-identical to tarfile's own pax 'w|' output."""
    ours = b"".join(pack_segments(radiology_study, MIB))
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path in [radiology_study, *sorted(radiology_study.rglob("*"), key=lambda p: p.parts)]:
            info = archive.gettarinfo(
                str(path), arcname=str(path.relative_to(radiology_study.parent))
            )
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            if path.is_file():
                with open(path, "rb") as handle:
                    archive.addfile(info, handle)
            else:
                archive.addfile(info)
    assert ours == expected.getvalue()
    assert len(ours) == measure_dataset(radiology_study).stream_length


def test_symlinks_and_fifos_are_refused(tmp_path, radiology_study, provider_key):
    link = radiology_study / "series-1" / "link.dcm"
    link.symlink_to(radiology_study / "README.txt")
    with pytest.raises(DatasetError, match=f"{link} is a symbolic link"):
        split_dataset(radiology_study, tmp_path / "out", k=2, n=3, signing_key=provider_key)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    link.unlink()
    fifo = radiology_study / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match=f"{fifo} is a fifo"):
        split_dataset(radiology_study, tmp_path / "out", k=2, n=3, signing_key=provider_key)


def test_bad_parameters_are_refused(tmp_path, radiology_study, provider_key):
    for k, n in [(1, 3), (4, 3), (2, 256)]:
        with pytest.raises(ShareParameterError, match="2 <= k <= n <= 255"):
            split_dataset(radiology_study, tmp_path / "out", k=k, n=n, signing_key=provider_key)
    with pytest.raises(ShareParameterError, match="segment size"):
        split_dataset(
            radiology_study, tmp_path / "o", k=2, n=3, signing_key=provider_key, segment_size=512
        )
    with pytest.raises(DatasetError, match="does not exist"):
        split_dataset(tmp_path / "missing", tmp_path / "o", k=2, n=3, signing_key=provider_key)


def test_existing_outputs_are_not_overwritten(
    tmp_path, radiology_study, split_transfer, provider_key
):
    transfer = split_transfer(radiology_study, 2, 3)
    outbox = transfer.shares[0].parent
    with pytest.raises(OutputExistsError, match="share-1 already exists"):
        split_dataset(radiology_study, outbox, k=2, n=3, signing_key=provider_key)
    inbox = tmp_path / "inbox"
    (inbox / "study-0042").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="study-0042 already exists"):
        combine_shares(transfer.shares, inbox, verify_key=provider_key.public_key())
    assert os.listdir(inbox) == ["study-0042"]


def test_many_small_files(tmp_path, split_transfer, provider_key):
    tree = {f"slice-{i:04d}.dcm": pseudo_random_bytes(i % 700, i) for i in range(400)}
    source = write_tree(tmp_path / "many", {"a": tree, "b": {"c": {"d": {"e.txt": b"deep"}}}})
    transfer = split_transfer(source, 2, 3)
    result = combine_shares(
        transfer.shares[:2], tmp_path / "in", verify_key=provider_key.public_key()
    )
    assert tree_of(result.output_path) == tree_of(source)


name_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\")
names = st.text(name_chars, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
# file sizes around the interesting places: empty, one byte, tar blocks, 1 MiB segments
sizes = st.sampled_from([0, 1, 511, 512, 513, 10240, MIB - 600, MIB - 1, MIB, MIB + 1])
trees = st.recursive(
    st.builds(lambda size, seed: pseudo_random_bytes(size, seed), sizes, st.integers(0, 9)),
    lambda children: st.dictionaries(names, children, max_size=4),
    max_leaves=5,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=st.dictionaries(names, trees, max_size=4), k=st.integers(2, 4), extra=st.integers(0, 2))
def test_round_trip_property(tmp_path_factory, provider_key, tree, k, extra):
    work = tmp_path_factory.mktemp("prop")
    source = write_tree(work / "dataset", tree)
    result = split_dataset(
        source, work / "out", k=k, n=k + extra, signing_key=provider_key, segment_size=MIB
    )
    chosen = result.share_paths[
        extra:
    ]  # the last k shares: never just the primary blocks when extra > 0
    combined = combine_shares(chosen, work / "in", verify_key=provider_key.public_key())
    assert tree_of(combined.output_path) == tree_of(source)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=sizes, k=st.integers(2, 5))
def test_single_file_sizes_property(tmp_path_factory, provider_key, size, k):
    work = tmp_path_factory.mktemp("single")
    source = work / "scan.bin"
    source.write_bytes(pseudo_random_bytes(size, size))
    result = split_dataset(
        source, work / "out", k=k, n=k + 1, signing_key=provider_key, segment_size=MIB
    )
    combined = combine_shares(
        result.share_paths[1:], work / "in", verify_key=provider_key.public_key()
    )
    assert combined.output_path.read_bytes() == source.read_bytes()


def test_the_largest_n(tmp_path, radiology_study, split_transfer, provider_key):
    transfer = split_transfer(radiology_study, 3, 255)
    assert len(transfer.shares) == 255 and transfer.shares[-1].name == "share-255"
    chosen = [transfer.shares[j] for j in (254, 99, 6)]
    result = combine_shares(chosen, tmp_path / "in", verify_key=provider_key.public_key())
    assert tree_of(result.output_path) == tree_of(radiology_study)


def test_output_folder_inside_the_dataset_is_refused(radiology_study, provider_key):
    with pytest.raises(DatasetError, match="inside the dataset"):
        split_dataset(
            radiology_study, radiology_study / "shares", k=2, n=3, signing_key=provider_key
        )
    assert not (radiology_study / "shares").exists()
