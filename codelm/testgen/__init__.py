"""Test writer stage: unit tests for a module, kept only when they pass, are stable, add
coverage and catch a bug (fail on a mutant of the code under test). Every candidate runs in
the sandbox of `evaluate/sandbox.py`, never in this process.

    from codelm.testgen import TestgenConfig, write_tests
    write_tests("pkg/mod.py", run="runs/mine", out="tests/test_mod_generated.py")
"""

from codelm.testgen.candidates import SampleConfig
from codelm.testgen.writer import TestgenConfig, Written, write_tests

__all__ = ["SampleConfig", "TestgenConfig", "Written", "write_tests"]
