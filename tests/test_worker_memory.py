"""What the worker's parent prepares before the prefork pool forks, so that its children share
it instead of each building their own copy (vertex_email/celery.py)."""

from tests.support.processes import python_output

CHILD_AFTER_FORK = """
import sys
import django
django.setup()
from vertex_email.celery import _share_memory_with_the_pool
_share_memory_with_the_pool()
before = set(sys.modules)
from billiard.util import set_pdeathsig
set_pdeathsig(9)  # what each pool child does first (celery.concurrency.prefork)
print(sorted(set(sys.modules) - before))
"""


def test_a_pool_child_asking_for_its_death_signal_builds_no_c_parser(tmp_path):
    """With cffi installed, billiard's set_pdeathsig parses a C declaration: pycparser and its
    parser, 2.5-3 MiB in each child (worker PSS 116 -> 113 MiB idle) unless the parent did it."""
    assert python_output(CHILD_AFTER_FORK, tmp_path) == "[]"
