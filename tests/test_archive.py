"""The archive's hash chain, index and locks, on records written through the real commit path."""

from __future__ import annotations

import json
import shutil

import pytest

from runbooklib.archive import GENESIS, Archive, sha256_file
from runbooklib.errors import ArchiveError, LockedError


def commit(archive: Archive, i: int, env: str = "lab", notebook: str = "00-x", status: str = "succeeded"):
    run_id = f"20261128T0000{i:02d}Z-{i:06x}"
    base = archive.record_base(env, "2026-11-28", run_id, notebook)
    manifest = {"run_id": run_id, "notebook": notebook, "environment": {"name": env}, "status": status,
                "mode": "plan", "started_at": f"2026-11-28T00:00:{i:02d}+00:00", "operator": "t@h"}
    return archive.commit(manifest, {"notebook": (base.with_name(base.name + ".ipynb"), f"nb {i}".encode()),
                                     "html": (base.with_name(base.name + ".html"), f"<p>{i}</p>".encode())})


@pytest.fixture
def filled(archive_root):
    archive = Archive(archive_root)
    paths = [commit(archive, i, env="lab" if i % 2 else "prod", status="failed" if i == 3 else "succeeded")
             for i in range(1, 6)]
    return archive, paths


def test_chain_links_each_manifest_to_the_previous(filled):
    archive, paths = filled
    manifests = [json.loads(p.read_text()) for p in paths]
    assert manifests[0]["prev_manifest_sha256"] == GENESIS
    for before, after, path in zip(manifests, manifests[1:], paths):
        assert after["prev_manifest_sha256"] == sha256_file(path)
    assert [m["seq"] for m in manifests] == [1, 2, 3, 4, 5]
    assert archive.verify().ok


def test_verify_names_an_edited_file(filled):
    archive, paths = filled
    html = paths[2].with_name(paths[2].name.replace(".manifest.json", ".html"))
    data = bytearray(html.read_bytes())
    data[0] ^= 1
    html.write_bytes(bytes(data))
    report = archive.verify()
    assert not report.ok
    assert "record 3" in report.problems[0] and "html" in report.problems[0] and "changed" in report.problems[0]


def test_verify_names_an_edited_manifest(filled):
    archive, paths = filled
    m = json.loads(paths[1].read_text())
    m["status"] = "succeeded" if m["status"] == "failed" else "failed"
    paths[1].write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    report = archive.verify()
    assert "record 2" in report.problems[0] and "edited" in report.problems[0]


def test_verify_names_a_removed_record(filled):
    archive, paths = filled
    # remove the record's files and its ledger line, as someone hiding a run would
    for f in paths[2].parent.glob(paths[2].name.replace(".manifest.json", ".*")):
        f.unlink()
    ledger = archive.root / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    report = archive.verify()
    assert not report.ok
    assert report.problems[0].startswith("record 3 ")  # the record that now follows the gap


def test_verify_names_swapped_records(filled):
    archive, paths = filled
    ledger = archive.root / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    ledger.write_text("\n".join(lines) + "\n")
    report = archive.verify()
    assert report.problems[0].startswith("record 2 ")
    assert "reordered" in report.problems[0]


def test_verify_names_swapped_manifest_files(filled):
    archive, paths = filled
    a, b = paths[1].read_bytes(), paths[3].read_bytes()
    paths[1].write_bytes(b)
    paths[3].write_bytes(a)
    report = archive.verify()
    assert report.problems[0].startswith("record 2 ") and "edited" in report.problems[0]


def test_verify_catches_records_cut_from_the_end(filled):
    archive, paths = filled
    shutil.rmtree(paths[-1].parent)  # lose the whole day folder... and the last ledger lines
    ledger = archive.root / "ledger.jsonl"
    ledger.write_text("\n".join(ledger.read_text().splitlines()[:2]) + "\n")
    report = archive.verify()
    assert any("cut from the end" in p for p in report.problems)


def test_verify_reports_a_manifest_missing_from_the_ledger(filled, tmp_path):
    archive, paths = filled
    extra = paths[0].with_name("20261128T999999Z-ffffff-00-x.manifest.json")
    extra.write_text("{}")
    assert any("not in the ledger" in p for p in archive.verify().problems)


def test_runs_filters_newest_first(filled):
    archive, _ = filled
    assert [r["seq"] for r in archive.runs()] == [5, 4, 3, 2, 1]
    assert [r["seq"] for r in archive.runs(environment="lab")] == [5, 3, 1]
    assert [r["seq"] for r in archive.runs(status="failed")] == [3]
    assert [r["seq"] for r in archive.runs(since="2026-11-28T00:00:02", until="2026-11-28T00:00:04")] == [3, 2]
    assert [r["seq"] for r in archive.runs(limit=2)] == [5, 4]


def test_index_is_rebuilt_when_missing(filled):
    archive, _ = filled
    (archive.root / "index.sqlite").unlink()
    assert len(archive.runs()) == 5


def test_manifest_lookup_by_prefix(filled):
    archive, _ = filled
    assert archive.manifest("20261128T000003Z")["seq"] == 3
    with pytest.raises(ArchiveError, match="matches 5 runs"):
        archive.manifest("20261128T")
    with pytest.raises(ArchiveError, match="no run"):
        archive.manifest("nope")


def test_lock_refuses_second_holder_and_names_the_first(archive_root):
    archive = Archive(archive_root)
    holder = {"operator": "alice@ws1", "pid": 4242, "run_id": "r1", "since": "2026-11-28T07:00:00"}
    with archive.run_lock("prod", "02-vm-baseline", holder):
        with pytest.raises(LockedError) as info:
            with archive.run_lock("prod", "02-vm-baseline", {"operator": "bob@ws2"}):
                pass
        assert "alice@ws1" in str(info.value) and "4242" in str(info.value)
        with archive.run_lock("staging", "02-vm-baseline", {}):  # another environment is independent
            pass
        with archive.run_lock("prod", "01-vm-preflight", {}):  # so is another notebook
            pass
    with archive.run_lock("prod", "02-vm-baseline", {}):  # released when the first run ends
        pass


# -- tamper evidence: what a local chain catches, and the witness for what it cannot ----------------

def _rewrite_newest_and_its_ledger_hash(archive, paths):
    m = json.loads(paths[-1].read_text())
    m["status"] = "succeeded" if m["status"] == "failed" else "failed"
    paths[-1].write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    ledger = archive.root / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    last = json.loads(lines[-1])
    last["sha256"] = sha256_file(paths[-1])
    ledger.write_text("\n".join(lines[:-1] + [json.dumps(last, sort_keys=True)]) + "\n")


def test_newest_manifest_rewritten_with_its_ledger_hash_is_caught(filled):
    archive, paths = filled
    witness = archive.head()
    _rewrite_newest_and_its_ledger_hash(archive, paths)
    problems = archive.verify().problems
    assert any("record 5 was rewritten after it was archived" in p for p in problems), problems
    (archive.root / "index.sqlite").unlink()  # the forger also removes the index: only a witness helps
    report = archive.verify()
    assert report.ok and any("--head" in w for w in report.warnings)
    caught = archive.verify(head=witness)
    assert any(f"witness {witness} is not in the chain" in p for p in caught.problems), caught.problems


def test_last_record_deleted_with_its_ledger_line_and_the_index_needs_the_witness(filled):
    archive, paths = filled
    witness = archive.head()
    earlier = f"3:{json.loads((archive.root / 'ledger.jsonl').read_text().splitlines()[2])['sha256']}"
    for f in paths[-1].parent.glob(paths[-1].name.replace(".manifest.json", ".*")):
        f.unlink()
    ledger = archive.root / "ledger.jsonl"
    ledger.write_text("\n".join(ledger.read_text().splitlines()[:-1]) + "\n")
    (archive.root / "index.sqlite").unlink()
    assert archive.verify().ok  # what a local chain cannot protect (README says so)
    assert not archive.verify(head=witness).ok
    assert archive.verify(head=earlier).ok  # an older witness is still in the chain
    assert "expected SEQ:SHA256" in archive.verify(head="nonsense").problems[0]


@pytest.mark.parametrize("column,forged", [("status", "succeeded"), ("operator", "someone@else")])
def test_a_forged_index_row_is_reported(filled, column, forged):
    import sqlite3

    archive, _ = filled
    db = sqlite3.connect(archive.root / "index.sqlite")
    db.execute(f"UPDATE runs SET {column} = ? WHERE seq = 3", (forged,))
    db.commit()
    db.close()
    assert archive.runs(status="succeeded" if column == "status" else None)  # `runs` shows the index...
    problems = archive.verify().problems  # ...verify does not trust it
    assert any("record 3" in p and f"has {column} {forged!r} in the index" in p for p in problems), problems


def test_stray_files_links_and_manifests_at_other_depths_are_reported(filled, tmp_path):
    archive, paths = filled
    day = paths[0].parent
    (day / "dump.txt").write_text("a notebook wrote this into the archive folder")
    (archive.root / "lab" / "stray.manifest.json").write_text("{}")
    (archive.root / "deep" / "er" / "x").mkdir(parents=True)
    (archive.root / "deep" / "er" / "x" / "y.manifest.json").write_text("{}")
    outside = tmp_path / "elsewhere.manifest.json"
    outside.write_text("{}")
    (day / "linked.manifest.json").symlink_to(outside)
    (archive.root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    problems = archive.verify().problems
    text = "\n".join(problems)
    assert "dump.txt: belongs to no record; only the runner writes into the archive" in text
    assert "lab/stray.manifest.json: manifest is not in the ledger" in text
    assert "deep/er/x/y.manifest.json: manifest is not in the ledger" in text
    assert "linked.manifest.json: a symbolic link" in text and "linkdir: a symbolic link" in text


def test_a_manifest_replaced_by_a_symlink_is_reported(filled, tmp_path):
    archive, paths = filled
    copy = tmp_path / "copy.json"
    copy.write_bytes(paths[1].read_bytes())
    paths[1].unlink()
    paths[1].symlink_to(copy)
    assert any("record 2" in p and "is a symbolic link" in p for p in archive.verify().problems)


def test_a_corrupt_index_is_reported_and_rebuilt_never_a_traceback(filled):
    archive, _ = filled
    (archive.root / "index.sqlite").write_bytes(b"garbage" * 1000)
    assert any("index.sqlite is damaged" in p for p in archive.verify().problems)
    with pytest.raises(ArchiveError, match="runbook reindex"):
        archive.runs()
    assert archive.reindex() == 5 and archive.moved_aside is not None
    assert len(archive.runs()) == 5 and archive.verify().ok


def test_a_refusal_never_erases_the_holder(archive_root):
    archive = Archive(archive_root)
    holder = {"operator": "alice@ws1", "pid": 4242, "run_id": "r1", "since": "2026-11-28T07:00:00"}
    with archive.run_lock("prod", "02-vm-baseline", holder):
        for _ in range(3):
            with pytest.raises(LockedError) as info, archive.run_lock("prod", "02-vm-baseline", {"operator": "b"}):
                pass
            assert "alice@ws1" in str(info.value) and "pid 4242," in str(info.value)


def test_the_lock_does_not_live_in_the_archive(tmp_path):
    holder = {"operator": "alice@ws1", "pid": 4242, "run_id": "r1"}
    with Archive(tmp_path / "one").run_lock("prod", "02-vm-baseline", holder), \
            pytest.raises(LockedError, match="alice@ws1"), \
            Archive(tmp_path / "two").run_lock("prod", "02-vm-baseline", {"operator": "bob@ws2"}):
        pass


def test_verify_never_sends_you_to_verify(filled):
    archive, _ = filled
    ledger = archive.root / "ledger.jsonl"
    ledger.write_text(ledger.read_text() + '{"seq": 6, "run_id"\n')
    problems = archive.verify().problems
    assert problems and all("runbook verify" not in p for p in problems)
    assert "ledger.jsonl line 6" in problems[0]
