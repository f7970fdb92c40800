"""The private files' upload names its failure: a cut link ends SFTP with an exception that has no words of its own."""

from __future__ import annotations

import pytest

from runbooklib import privatefiles
from runbooklib.errors import HostError


class _Host:
    name = "db2"


class _Fleet:
    """A fleet whose connection to the host ends as the lab's cut link ended it (an SFTP channel that hit EOF)."""

    def __init__(self, error):
        self.error = error

    def connection(self, host):
        raise self.error


@pytest.mark.parametrize(("error", "words"), [(EOFError(), "the connection ended (EOFError)"), (TimeoutError(), "timed out"),
                                              (OSError("Socket is closed"), "Socket is closed")])
def test_a_failed_upload_says_why_even_when_the_exception_is_bare(error, words):
    with pytest.raises(HostError) as e:
        privatefiles.upload(_Fleet(error), _Host(), ".runbooklib-db", {"admin.cnf": "x"})
    assert str(e.value) == f"db2: cannot write the client's files into ~/.runbooklib-db over SFTP: {words}"
