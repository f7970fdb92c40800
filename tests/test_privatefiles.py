"""The private files' upload names its failure: a cut link ends SFTP with an exception that has no words of its own."""

from __future__ import annotations

import threading

import paramiko
import pytest

from runbooklib import privatefiles
from runbooklib.errors import HostError
from runbooklib.ssh import Fleet


class _Host:
    name = "db2"


class _Fleet(Fleet):
    """A fleet whose connection to the host ends as the lab's cut link ended it (an SFTP channel that hit EOF), or as a
    stopped host's stale connection does (paramiko's "Server connection dropped: ", nothing after the colon)."""

    def __init__(self, error):
        self.error, self._lock, self._conns, self.dropped = error, threading.Lock(), {"db2": object()}, []

    def connection(self, host):
        raise self.error

    def _drop(self, name):
        self.dropped.append(name)


@pytest.mark.parametrize(("error", "words"), [(EOFError(), "the connection ended (EOFError)"), (TimeoutError(), "timed out"),
                                              (OSError("Socket is closed"), "Socket is closed"),
                                              (paramiko.SSHException("Server connection dropped: "),
                                               "Server connection dropped (the host stopped or its link was cut)")])
def test_a_failed_upload_says_why_even_when_the_exception_is_bare(error, words):
    fleet = _Fleet(error)
    with pytest.raises(HostError) as e:
        privatefiles.upload(fleet, _Host(), ".runbooklib-db", {"admin.cnf": "x"})
    assert str(e.value) == f"db2: cannot write the client's files into ~/.runbooklib-db over SFTP: {words}"
    assert fleet.dropped == ["db2"], "the dead connection is dropped: the next command reconnects"
