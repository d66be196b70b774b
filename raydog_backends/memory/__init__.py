"""In-memory plugins: a compute backend and a tag store that live in this process.

They are products, not mocks: developers unit-test cluster behaviour with them (see
``raydog simulate``), and they pass the same contract suites as the real plugins.
"""
