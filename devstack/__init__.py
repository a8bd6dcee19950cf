"""Local stand-ins for the cloud: a moto server and real PostgreSQL servers.

Used by `make demo`, the tests and the benchmarks. Not part of the deployed bundle.
"""
