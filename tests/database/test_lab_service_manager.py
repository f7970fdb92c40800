"""What the lab's service manager learned for the database VMs (Debian's mariadb.service runs as mysql,
restarts on-abnormal, needs /run/mysqld from tmpfiles.d): the pure parts; the lab test sees mariadbd run as mysql."""

from __future__ import annotations

import pwd

import pytest

from runbooklab import systemctl


def test_user_group_and_umask_become_the_processes_credentials():
    if "mysql" not in {p.pw_name for p in pwd.getpwall()}:
        pytest.skip("no mysql user here (mariadb-server makes it)")
    mysql = pwd.getpwnam("mysql")
    creds = systemctl.credentials("mariadb.service", {"Service": {"User": ["mysql"], "Group": ["mysql"], "UMask": ["007"]}})
    assert creds["user"] == mysql.pw_uid and creds["group"] == mysql.pw_gid and creds["umask"] == 0o007
    assert systemctl.credentials("x.service", {"Service": {}}) == {}
    with pytest.raises(systemctl.Fail, match="User=nobody-here: failed to determine user credentials"):
        systemctl.credentials("x.service", {"Service": {"User": ["nobody-here"]}})


def test_exec_lines_prefixed_with_bang_or_plus_keep_full_privileges():
    assert systemctl.privileged("!/etc/mysql/debian-start") and systemctl.privileged("-+/bin/true")
    assert not systemctl.privileged("-/usr/bin/galera_recovery") and not systemctl.privileged("/usr/sbin/mariadbd")


def test_debian_mariadb_unit_is_understood():
    if not any((d / "mariadb.service").exists() for d in systemctl.UNIT_DIRS):
        pytest.skip("mariadb-server is not installed here")
    name, _, unit = systemctl.find_unit("mariadb")
    assert name == "mariadb.service" and systemctl.restart_policy(unit) == "on-abnormal"
    with pytest.raises(systemctl.Fail, match="Restart=sometimes is not supported"):
        systemctl.restart_policy({"Service": {"Restart": ["sometimes"]}})
