"""Enclave: a secure research-data enclave for medical AI."""

__version__ = "0.1.0"
