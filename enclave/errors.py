"""Errors that the CLI and services report to people as one clear line.

``EnclaveError`` is defined in the lowest layer (``secret_sharing.errors``) so that every
package can derive from it without importing the application; it is re-exported here.
"""

from secret_sharing.errors import EnclaveError

__all__ = ["EnclaveError"]
