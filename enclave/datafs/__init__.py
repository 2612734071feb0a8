"""Decrypting mounts: a stored dataset version served read-only by a FUSE filesystem that
decrypts each read from the encrypted store, so plaintext exists only in the page cache and in
the buffers of reads in flight, never on a disk, and a mount costs the same for any size.

* :mod:`enclave.datafs.tree`: the version's directory tree and file attributes (pure);
* :mod:`enclave.datafs.fs`: the FUSE operations over :class:`ingestion.store.RangeReader`;
* :mod:`enclave.datafs.daemon`: ``python -m enclave.datafs``, one process per mounted version,
  given the version's data key (and nothing else) on its standard input;
* :mod:`enclave.datafs.mounts`: the hub's side, starting, finding and stopping those processes.
* :mod:`enclave.datafs.nativefs`: the native fast path, ``enclave/datafs/native/datafs.c``
  (libfuse3, OpenSSL), which the daemon hands the version to and supervises when it is built.

Why FUSE and not the alternatives, with the measurements: ``docs/datasets-at-scale.md``.
"""
