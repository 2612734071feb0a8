"""The one place ingestion touches the share format and provider keys.

Receivers, the worker and the upload client only need a few facts from a share header
(transfer id, index, k, n, length, signer); keeping the adaptation here means a change in
``secret_sharing`` is fixed in one module.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRANSFER_ID = re.compile(r"[0-9a-f]{8,128}\Z")


@dataclass(frozen=True)
class ShareFacts:
    transfer_id: str
    index: int
    k: int
    n: int
    length: int  # bytes of the whole share file, as declared in its header
    fingerprint: str
    dataset: str


def facts(info: Any) -> ShareFacts:
    """Map a ``secret_sharing.ShareInfo`` onto what ingestion needs."""

    def pick(*names: str) -> Any:
        for name in names:
            if hasattr(info, name):
                return getattr(info, name)
        raise AttributeError(f"ShareInfo has none of {names}")

    return ShareFacts(
        transfer_id=str(pick("transfer_id")),
        index=int(pick("index", "share_index")),
        k=int(pick("k")),
        n=int(pick("n")),
        length=int(pick("share_length", "length", "size")),
        fingerprint=str(pick("signer_fingerprint", "fingerprint", "signer")),
        dataset=str(pick("dataset_name", "dataset", "name")),
    )


def read_facts(path: Path) -> ShareFacts:
    """Parse a (possibly still partial) share's header; raises ShareFormatError."""
    from secret_sharing import read_share_info

    return facts(read_share_info(Path(path)))


def verify(path: Path, verify_key: Any) -> ShareFacts:
    """Check a complete share against its provider's key; raises ShareError subclasses."""
    from secret_sharing import verify_share

    return facts(verify_share(Path(path), verify_key))


def verify_key_from_pem(pem: str | bytes) -> Any:
    """Load a provider's verify key as ``secret_sharing`` expects it, from catalog PEM text."""
    from secret_sharing import load_verify_key

    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    with tempfile.NamedTemporaryFile(suffix=".pem") as fh:
        fh.write(data)
        fh.flush()
        return load_verify_key(Path(fh.name))


def fingerprint_of_pem(pem: str | bytes) -> str:
    from secret_sharing import key_fingerprint

    return key_fingerprint(verify_key_from_pem(pem))


# --- upload prologue ---------------------------------------------------------------------
# A share's signed manifest sits at its end, after the data blocks. So that a receiver can
# check the signer, the declared length and the quota before taking any data, an upload
# starts with a prologue: the 64-byte header followed by the share's tail (block-hash
# index, key share, manifest, signature, footer: about 32 bytes per 4 MiB segment + 1 KiB).


def read_prologue(path: Path) -> bytes:
    """Header + tail of a complete share file, as a client sends it to begin an upload."""
    from secret_sharing import format as fmt

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header = fh.read(fmt.HEADER_LEN)
        fh.seek(max(0, size - fmt.FOOTER_LEN))
        raw_footer = fh.read(fmt.FOOTER_LEN)
        try:
            fmt.Header.decode(header)
            footer = fmt.Footer.decode(raw_footer, size)
        except fmt.FormatProblem as exc:
            from secret_sharing.errors import ShareFormatError

            raise ShareFormatError(f"{path}: {exc}") from None
        fh.seek(footer.index_offset)
        return header + fh.read()


def declared_length(prologue: bytes) -> int:
    """The share length a prologue's footer implies; raises ShareFormatError."""
    import struct

    from secret_sharing import format as fmt
    from secret_sharing.errors import ShareFormatError

    if len(prologue) < fmt.HEADER_LEN + fmt.FOOTER_LEN:
        raise ShareFormatError("too short to be a share header and footer")
    try:
        fmt.Header.decode(prologue[: fmt.HEADER_LEN])
        raw_footer = prologue[-fmt.FOOTER_LEN :]
        signature_offset = struct.unpack(">8Q", raw_footer[:64])[6]
        length = signature_offset + fmt.SIGNATURE_LEN + fmt.FOOTER_LEN
        footer = fmt.Footer.decode(raw_footer, length)
    except fmt.FormatProblem as exc:
        raise ShareFormatError(str(exc)) from None
    if footer.index_offset != length - (len(prologue) - fmt.HEADER_LEN):
        raise ShareFormatError("prologue tail does not start at the block-hash index")
    return length


def write_probe(prologue: bytes, probe: Path) -> int:
    """Lay a prologue out as a sparse file of the declared length (data blocks left as holes).

    Lets ``read_share_info`` parse header, footer and manifest exactly as in the real file.
    """
    from secret_sharing import format as fmt

    length = declared_length(prologue)
    with open(probe, "wb") as fh:
        fh.write(prologue[: fmt.HEADER_LEN])
        fh.seek(length - (len(prologue) - fmt.HEADER_LEN))
        fh.write(prologue[fmt.HEADER_LEN :])
    return length
