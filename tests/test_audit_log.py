"""The audit log is tamper-evident: every edit made behind the sandbox's back is found.

Each test writes a log through ``State``, closes it, tampers with the SQLite file through
a connection of its own (as an attacker with write access to the file would), then opens
a fresh ``State`` and runs ``verify``. Where the damage can be pinned to a record, the
report must name it (``first_bad``).
"""

from __future__ import annotations

import base64
import copy
import json
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import audit
from sandbox.merkle import EMPTY_ROOT, Frontier, leaf_hash, root_of
from sandbox.state import State, StateError

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


# -- helpers --------------------------------------------------------------------------------
def write_log(path: Path, n: int, *, checkpoint_every: int = 1000, key=KEY) -> None:  # type: ignore[no-untyped-def]
    """``n`` records of a few kinds, each in its own transaction, then close."""
    state = State(path, key, checkpoint_every=checkpoint_every)
    try:
        for i in range(1, n + 1):
            if i % 3 == 0:
                state.record("query.refused", workspace="ws", member=f"m{i % 4}",
                             sql=f"SELECT {i} FROM persons", rule="gate.row_level_output",
                             message="no raw rows")
            elif i % 3 == 1:
                state.record("audit.read", workspace="ws", member=None, actor="auditor",
                             what="records", filters={"n": i, "text": "数据 ✓"})
            else:
                state.record("budget.changed", workspace="ws", member=f"m{i % 4}",
                             actor="operator", operation="set", epsilon_total=float(i),
                             delta_total=1e-6, refresh="monthly")
    finally:
        state.close()


def fresh(path: Path, key=KEY) -> State:  # type: ignore[no-untyped-def]
    return State(path, key)


def verify(path: Path, external: audit.Checkpoint | None = None) -> audit.VerifyReport:
    state = fresh(path)
    try:
        return state.verify(external)
    finally:
        state.close()


def take_checkpoint(path: Path) -> audit.Checkpoint:
    """What an auditor keeps: a signed tree head exported at some point in time."""
    state = fresh(path)
    try:
        return state.checkpoint()
    finally:
        state.close()


class Raw:
    """The attacker's own connection to the state file."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("BEGIN IMMEDIATE")

    def bodies(self) -> dict[int, str]:
        return dict(self.con.execute("SELECT seq, body FROM audit_records ORDER BY seq"))

    def body(self, seq: int) -> dict:  # type: ignore[type-arg]
        return json.loads(self.bodies()[seq])

    def set_body(self, seq: int, body: dict | str, *, leaf: bool = False) -> None:  # type: ignore[type-arg]
        text = body if isinstance(body, str) else audit.canonical(body).decode()
        self.con.execute("UPDATE audit_records SET body = ? WHERE seq = ?", (text, seq))
        if leaf:
            self.con.execute("UPDATE audit_records SET leaf = ? WHERE seq = ?",
                             (leaf_hash(text.encode()).hex(), seq))

    def rechain(self, start: int = 1) -> None:
        """Recompute ``prev``, ``leaf`` and the stored head from record ``start`` on."""
        rows = self.con.execute("SELECT seq, body FROM audit_records ORDER BY seq").fetchall()
        prev = ""
        for seq, text in rows:
            body = json.loads(text)
            if seq >= start:
                body["prev"] = prev
                text = audit.canonical(body).decode()
                self.con.execute("UPDATE audit_records SET body = ?, leaf = ? WHERE seq = ?",
                                 (text, audit.record_leaf(body).hex(), seq))
            prev = audit.record_leaf(json.loads(text)).hex()
        self.reset_head()

    def reset_head(self) -> None:
        """Make the stored head (meta) agree with whatever records are in the table."""
        f = Frontier()
        last_seq, last_leaf = 0, ""
        for seq, text in self.con.execute("SELECT seq, body FROM audit_records ORDER BY seq"):
            leaf = audit.record_leaf_from_text(text)
            f.append(leaf)
            last_seq, last_leaf = seq, leaf.hex()
        self.con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("head_seq", str(last_seq)), ("head_leaf", last_leaf),
            ("frontier", json.dumps(f.to_list()))])

    def insert(self, body: dict) -> None:  # type: ignore[type-arg]
        text = audit.canonical(body).decode()
        self.con.execute("INSERT INTO audit_records VALUES (?,?,?,?,?,?,?)",
                         (body["seq"], body["time"], body["kind"], body["workspace"],
                          body["member"], text, audit.record_leaf(body).hex()))

    def shift(self, from_seq: int, by: int) -> None:
        """Renumber records ``from_seq``.. by ``by`` (column only; bodies keep their seq)."""
        self.con.execute("UPDATE audit_records SET seq = -seq WHERE seq >= ?", (from_seq,))
        self.con.execute("UPDATE audit_records SET seq = -seq + ? WHERE seq < 0", (by,))

    def execute(self, sql: str, args: tuple = ()) -> None:  # type: ignore[type-arg]
        self.con.execute(sql, args)

    def close(self) -> None:
        self.con.execute("COMMIT")
        self.con.close()


def tamper(path: Path) -> Raw:
    return Raw(path)


def leaves_of(path: Path) -> list[bytes]:
    con = sqlite3.connect(path)
    try:
        return [leaf_hash(t.encode()) for (t,) in
                con.execute("SELECT body FROM audit_records ORDER BY seq")]
    finally:
        con.close()


N = 20  # records in the tampering tests


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    write_log(path, N, checkpoint_every=8)  # stored checkpoints at 8 and 16
    assert verify(path).ok
    return path


def bad(report: audit.VerifyReport, first: int | set[int] | None, *words: str) -> None:
    assert not report.ok, "tampering went unnoticed"
    if isinstance(first, set):
        assert report.first_bad in first, report.problems
    else:
        assert report.first_bad == first, report.problems
    text = " ".join(report.problems)
    for w in words:
        assert w in text, report.problems


# -- untampered logs --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 40])
def test_untampered_logs_verify(tmp_path: Path, n: int) -> None:
    path = tmp_path / "state.db"
    write_log(path, n, checkpoint_every=8)
    report = verify(path)
    assert report.ok, report.problems
    assert report.records == n
    assert report.checkpoints == n // 8  # automatic checkpoints every 8 records
    assert report.first_bad is None
    assert report.root_hash == root_of(leaves_of(path)).hex()
    # ... also against a checkpoint the auditor kept, and after more records were added.
    cp = take_checkpoint(path)
    assert cp.tree_size == n and cp.verify_signature(KEY.public_key())
    write_log_more(path, 3)
    report = verify(path, external=cp)
    assert report.ok, report.problems
    assert report.records == n + 3


def write_log_more(path: Path, k: int) -> None:
    state = fresh(path)
    try:
        for i in range(k):
            state.record("audit.read", actor="auditor", what="more", filters={"i": i})
    finally:
        state.close()


def test_records_carry_the_chain_and_sequence(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_log(path, 5)
    raw = tamper(path)
    try:
        bodies = {seq: json.loads(t) for seq, t in raw.bodies().items()}
        leaves = dict(raw.con.execute("SELECT seq, leaf FROM audit_records"))
    finally:
        raw.close()
    assert list(bodies) == [1, 2, 3, 4, 5]
    assert bodies[1]["prev"] == ""
    for seq in range(2, 6):
        assert bodies[seq]["prev"] == leaves[seq - 1]
        assert bodies[seq]["seq"] == seq and bodies[seq]["v"] == audit.SCHEMA_VERSION


def test_checkpoint_of_an_empty_log_stays_valid(tmp_path: Path) -> None:
    """A checkpoint taken before the first record covers the empty tree, nothing more."""
    path = tmp_path / "state.db"
    cp = take_checkpoint(path)
    assert cp.tree_size == 0 and cp.root_hash == EMPTY_ROOT.hex()
    assert verify(path).ok
    write_log_more(path, 2)
    report = verify(path, external=cp)
    assert report.ok, report.problems
    forged = audit.sign_checkpoint(KEY, 0, b"\x00" * 32)
    bad(verify(path, external=forged), None, "size 0")


# -- edited records ----------------------------------------------------------------------------
@pytest.mark.parametrize("seq", [1, 5, N])
def test_edited_body_is_named(log: Path, seq: int) -> None:
    raw = tamper(log)
    body = raw.body(seq)
    body["member"] = "someone-else"
    raw.set_body(seq, body)  # the stored leaf is left as it was
    raw.close()
    bad(verify(log), seq, f"#{seq}", "altered")


@pytest.mark.parametrize("text", ["{not json", '{"seq": 5}', "[]", "null"])
def test_garbage_body_is_named(log: Path, text: str) -> None:
    raw = tamper(log)
    raw.set_body(5, text, leaf=True)
    raw.close()
    bad(verify(log), 5, "#5")


def test_non_canonical_body_is_named(log: Path) -> None:
    raw = tamper(log)
    body = raw.body(7)
    raw.set_body(7, json.dumps(body, indent=1), leaf=True)  # same content, other bytes
    raw.close()
    bad(verify(log), 7, "#7", "canonical")


def test_edited_body_with_recomputed_leaf_is_caught_by_the_chain(log: Path) -> None:
    raw = tamper(log)
    body = raw.body(5)
    body["sql"] = "SELECT 'innocent'"
    raw.set_body(5, body, leaf=True)  # leaf consistent, but record 6 still points at the old one
    raw.close()
    report = verify(log)
    bad(report, {5, 6}, "#6", "before it")
    # the stored checkpoints at 8 and 16 no longer match either
    assert sum("does not match the records" in p for p in report.problems) == 2


def test_edited_last_record_with_recomputed_leaf(log: Path) -> None:
    """The last record has no successor: its checkpoint (or the stored head) catches it."""
    cp = take_checkpoint(log)
    raw = tamper(log)
    body = raw.body(N)
    body["epsilon_total"] = 1e9
    raw.set_body(N, body, leaf=True)
    raw.execute("DELETE FROM audit_checkpoints WHERE tree_size > 16")
    raw.close()
    bad(verify(log, external=cp), N, f"#{N}")
    bad(verify(log), N, f"#{N}")  # the stored head (last leaf, tree head) disagrees too


def test_edited_record_with_whole_chain_recomputed_is_caught_by_checkpoints(log: Path) -> None:
    raw = tamper(log)
    body = raw.body(3)
    body["sql"] = "SELECT 1"
    raw.set_body(3, body)
    raw.rechain(start=3)  # every later record re-pointed and re-hashed, head rewritten
    raw.close()
    report = verify(log)
    assert not report.ok
    assert any("stored checkpoint at size 8 does not match" in p for p in report.problems)
    assert any("stored checkpoint at size 16 does not match" in p for p in report.problems)


# -- removed, inserted, reordered --------------------------------------------------------------
@pytest.mark.parametrize("seq", [1, 6, N - 1])
def test_deleted_record(log: Path, seq: int) -> None:
    raw = tamper(log)
    raw.execute("DELETE FROM audit_records WHERE seq = ?", (seq,))
    raw.close()
    bad(verify(log), {seq, seq + 1}, "removed")


def test_deleted_last_record(log: Path) -> None:
    raw = tamper(log)
    raw.execute("DELETE FROM audit_records WHERE seq = ?", (N,))
    raw.close()
    bad(verify(log), N, "removed")


def test_deleted_record_with_rechained_log_is_named(log: Path) -> None:
    """A gap in the numbering is found even when the chain and head were made consistent."""
    raw = tamper(log)
    raw.execute("DELETE FROM audit_records WHERE seq = 6")
    raw.execute("DELETE FROM audit_checkpoints")
    raw.rechain(start=7)
    raw.close()
    bad(verify(log), 7, "#7", "removed")


def test_deleted_record_with_renumbering_and_rechaining(log: Path) -> None:
    raw = tamper(log)
    raw.execute("DELETE FROM audit_records WHERE seq = 4")
    raw.shift(5, -1)
    for seq, text in raw.bodies().items():
        body = json.loads(text)
        body["seq"] = seq
        raw.set_body(seq, body)
    raw.rechain(start=4)
    raw.close()
    report = verify(log)
    assert not report.ok
    assert any("checkpoint at size 8 does not match" in p for p in report.problems)


@pytest.mark.parametrize("at", [1, 6, N])
def test_inserted_record(log: Path, at: int) -> None:
    raw = tamper(log)
    prev = raw.con.execute("SELECT leaf FROM audit_records WHERE seq = ?", (at - 1,)).fetchone()
    raw.shift(at, 1)  # make room; the moved records keep their bodies
    forged = audit.make_body(at, prev[0] if prev else "", "audit.read", workspace="ws",
                             member=None, actor="auditor", what="nothing", filters={})
    raw.insert(forged)
    raw.close()
    bad(verify(log), {at, at + 1}, f"#{at + 1}")


def test_record_appended_behind_the_sandboxs_back(log: Path) -> None:
    raw = tamper(log)
    last = raw.con.execute("SELECT leaf FROM audit_records WHERE seq = ?", (N,)).fetchone()[0]
    raw.insert(audit.make_body(N + 1, last, "audit.read", workspace="ws", member=None,
                               actor="auditor", what="forged", filters={}))
    raw.close()
    bad(verify(log), N + 1, f"#{N + 1}")


def test_swapped_bodies(log: Path) -> None:
    raw = tamper(log)
    rows = dict(raw.con.execute("SELECT seq, body || char(0) || leaf FROM audit_records"))
    (b3, l3), (b9, l9) = (rows[3].split("\0"), rows[9].split("\0"))
    raw.execute("UPDATE audit_records SET body = ?, leaf = ? WHERE seq = 3", (b9, l9))
    raw.execute("UPDATE audit_records SET body = ?, leaf = ? WHERE seq = 9", (b3, l3))
    raw.close()
    bad(verify(log), 3, "#3")


def test_swapped_bodies_only(log: Path) -> None:
    raw = tamper(log)
    bodies = raw.bodies()
    raw.set_body(3, bodies[4])
    raw.set_body(4, bodies[3])
    raw.close()
    bad(verify(log), 3)


def test_swapped_sequence_numbers(log: Path) -> None:
    raw = tamper(log)
    raw.execute("UPDATE audit_records SET seq = -1 WHERE seq = 4")
    raw.execute("UPDATE audit_records SET seq = 4 WHERE seq = 11")
    raw.execute("UPDATE audit_records SET seq = 11 WHERE seq = -1")
    raw.close()
    bad(verify(log), 4, "#4", "reordered")


# -- truncation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 10, N - 1])
def test_truncated_tail_against_the_auditors_checkpoint(log: Path, keep: int) -> None:
    cp = take_checkpoint(log)  # the auditor keeps this file
    raw = tamper(log)
    raw.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
    raw.execute("DELETE FROM audit_checkpoints")  # no stored checkpoint left to give it away
    raw.reset_head()  # and the stored head agrees with the shorter log
    raw.close()
    assert verify(log).ok  # consistent on its own: only the external checkpoint can tell
    report = verify(log, external=cp)
    bad(report, keep + 1, "your checkpoint", "truncated", f"#{keep}")
    assert report.records == keep


def test_truncated_tail_with_stored_checkpoints_left(log: Path) -> None:
    raw = tamper(log)
    raw.execute("DELETE FROM audit_records WHERE seq > 12")
    raw.reset_head()
    raw.close()
    bad(verify(log), 13, "stored checkpoint covers 16", "truncated")


# -- the stored head ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["not json", "[[0, 12]]", '[["x", "00"]]', "{}", "[1]"])
def test_garbled_stored_head_is_reported_not_crashed(log: Path, value: str) -> None:
    raw = tamper(log)
    raw.execute("UPDATE meta SET value = ? WHERE key = 'frontier'", (value,))
    raw.close()
    bad(verify(log), None, "head")


def test_rewound_stored_head(log: Path) -> None:
    raw = tamper(log)
    raw.execute("UPDATE meta SET value = '12' WHERE key = 'head_seq'")
    raw.close()
    bad(verify(log), 13, "head says 12")


# -- checkpoints ---------------------------------------------------------------------------------
def test_altered_stored_checkpoint_signature(log: Path) -> None:
    raw = tamper(log)
    (sig,) = raw.con.execute("SELECT signature FROM audit_checkpoints WHERE tree_size = 8"
                             ).fetchone()
    raw_sig = bytearray(base64.b64decode(sig))
    raw_sig[10] ^= 1
    raw.execute("UPDATE audit_checkpoints SET signature = ? WHERE tree_size = 8",
                (base64.b64encode(bytes(raw_sig)).decode(),))
    raw.close()
    bad(verify(log), None, "size 8", "bad signature")


@pytest.mark.parametrize("change", ["root_hash", "time", "tree_size", "garbage"])
def test_altered_stored_checkpoint_fields(log: Path, change: str) -> None:
    raw = tamper(log)
    if change == "root_hash":
        raw.execute("UPDATE audit_checkpoints SET root_hash = ? WHERE tree_size = 8",
                    ("00" * 32,))
    elif change == "time":
        raw.execute("UPDATE audit_checkpoints SET time = '2000-01-01T00:00:00+00:00' "
                    "WHERE tree_size = 8")
    elif change == "tree_size":
        raw.execute("UPDATE audit_checkpoints SET tree_size = 9 WHERE tree_size = 8")
    else:
        raw.execute("UPDATE audit_checkpoints SET signature = 'not base64!' WHERE tree_size = 8")
    raw.close()
    bad(verify(log), None, "bad signature")


def test_checkpoint_signed_by_another_key(log: Path) -> None:
    leaves = leaves_of(log)
    forged = audit.sign_checkpoint(OTHER_KEY, 12, root_of(leaves[:12]))  # right root, wrong key
    raw = tamper(log)
    raw.execute("INSERT INTO audit_checkpoints VALUES (?,?,?,?,?)",
                (forged.tree_size, forged.root_hash, forged.time, forged.public_key,
                 forged.signature))
    raw.close()
    bad(verify(log), None, "size 12", "bad signature")
    # an auditor's file from another log (or re-signed by an attacker) is rejected too
    bad(verify(log, external=forged), None, "does not verify with this log's key")


def test_fully_reforged_log_is_caught_by_the_auditors_checkpoint(log: Path) -> None:
    cp = take_checkpoint(log)
    raw = tamper(log)
    for seq, text in raw.bodies().items():  # rewrite history: every record changed
        body = json.loads(text)
        body["actor"] = "nobody"
        body["time"] = "2001-01-01T00:00:00.000000+00:00"
        raw.set_body(seq, body)
    raw.rechain()
    raw.execute("DELETE FROM audit_checkpoints")
    raw.close()
    alone = verify(log)
    assert alone.ok, alone.problems  # a consistent forgery: nothing inside the file tells
    report = verify(log, external=cp)
    bad(report, None, "your checkpoint", f"size {cp.tree_size}", "does not match")
    assert report.root_hash != cp.root_hash


def test_reforged_log_with_forged_checkpoints_is_caught(log: Path) -> None:
    raw = tamper(log)
    body = raw.body(2)
    body["member"] = "x"
    raw.set_body(2, body)
    raw.rechain()
    raw.execute("DELETE FROM audit_checkpoints")
    leaves = leaves_of_raw(raw)
    for size in (8, 16):
        cp = audit.sign_checkpoint(OTHER_KEY, size, root_of(leaves[:size]))
        raw.execute("INSERT INTO audit_checkpoints VALUES (?,?,?,?,?)",
                    (cp.tree_size, cp.root_hash, cp.time, cp.public_key, cp.signature))
    raw.close()
    bad(verify(log), None, "size 8", "size 16", "bad signature")


def leaves_of_raw(raw: Raw) -> list[bytes]:
    return [leaf_hash(t.encode()) for t in raw.bodies().values()]


# -- inclusion proofs ----------------------------------------------------------------------------
def test_inclusion_proofs_check(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_log(path, 13, checkpoint_every=5)
    state = fresh(path)
    try:
        pub = KEY.public_key()
        for seq in range(1, 14):
            doc = json.loads(json.dumps(state.proof(seq)))  # as written to a file
            assert doc["record"]["seq"] == seq and doc["leaf_index"] == seq - 1
            assert doc["tree_size"] == 13
            assert audit.check_proof(doc, pub)
            assert audit.check_proof(doc)  # with the key embedded in the checkpoint
            assert not audit.check_proof(doc, OTHER_KEY.public_key())
        for bad_seq in (0, 14, -1):
            with pytest.raises(StateError, match="no audit record"):
                state.proof(bad_seq)
        assert state.verify().ok  # proofs store signed checkpoints that keep verifying
    finally:
        state.close()


def _alterations(doc: dict) -> Iterator[tuple[str, dict]]:  # type: ignore[type-arg]
    def changed(desc: str, fn) -> tuple[str, dict]:  # type: ignore[no-untyped-def,type-arg]
        d = copy.deepcopy(doc)
        fn(d)
        return desc, d

    yield changed("record member", lambda d: d["record"].update(member="mallory"))
    yield changed("record seq", lambda d: d["record"].update(seq=d["record"]["seq"] + 1))
    yield changed("record dropped field", lambda d: d["record"].pop("prev"))
    yield changed("leaf_index + 1", lambda d: d.update(leaf_index=d["leaf_index"] + 1))
    yield changed("leaf_index - 1", lambda d: d.update(leaf_index=d["leaf_index"] - 1))
    yield changed("tree_size", lambda d: d.update(tree_size=d["tree_size"] + 1))
    yield changed("leaf_hash", lambda d: d.update(leaf_hash="00" * 32))
    for i in range(len(doc["audit_path"])):
        yield changed(f"audit_path[{i}]", lambda d, i=i: d["audit_path"].__setitem__(
            i, flip_hex(d["audit_path"][i])))
    yield changed("audit_path + extra", lambda d: d["audit_path"].append("00" * 32))
    if doc["audit_path"]:
        yield changed("audit_path - last", lambda d: d["audit_path"].pop())
    yield changed("audit_path not hex", lambda d: d.update(audit_path=["zz"]))
    yield changed("checkpoint root_hash", lambda d: d["checkpoint"].update(
        root_hash=flip_hex(d["checkpoint"]["root_hash"])))
    yield changed("checkpoint signature", lambda d: d["checkpoint"].update(
        signature=flip_b64(d["checkpoint"]["signature"])))
    yield changed("checkpoint tree_size", lambda d: d["checkpoint"].update(
        tree_size=d["checkpoint"]["tree_size"] + 1))
    yield changed("checkpoint time", lambda d: d["checkpoint"].update(time="2000-01-01"))
    yield changed("checkpoint log", lambda d: d["checkpoint"].update(log="other-log"))
    yield changed("checkpoint missing", lambda d: d.pop("checkpoint"))
    yield changed("record missing", lambda d: d.pop("record"))


def flip_hex(h: str) -> str:
    return ("1" if h[0] != "1" else "2") + h[1:]


def flip_b64(s: str) -> str:
    raw = bytearray(base64.b64decode(s))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("seq", [1, 2, 7, 12, 13])
def test_altered_proofs_fail(tmp_path: Path, seq: int) -> None:
    path = tmp_path / "state.db"
    write_log(path, 13)
    state = fresh(path)
    try:
        doc = state.proof(seq)
    finally:
        state.close()
    pub = KEY.public_key()
    assert audit.check_proof(doc, pub)
    for desc, altered in _alterations(doc):
        assert not audit.check_proof(altered, pub), desc
        assert not audit.check_proof(altered), desc
    # The embedded key is what an unpinned check trusts; it is not part of the signed bytes,
    # so with the log's key pinned a wrong claim there changes nothing.
    other = copy.deepcopy(doc)
    other["checkpoint"]["public_key"] = audit.public_hex(OTHER_KEY)
    assert not audit.check_proof(other)


def test_proof_resigned_by_an_attacker_needs_the_pinned_key(tmp_path: Path) -> None:
    """A proof is only as good as the key it is checked with: pin the log's public key."""
    path = tmp_path / "state.db"
    write_log(path, 4)
    state = fresh(path)
    try:
        doc = state.proof(2)
    finally:
        state.close()
    doc["record"]["member"] = "mallory"
    leaf = audit.record_leaf(doc["record"])
    doc["leaf_hash"] = leaf.hex()
    doc["tree_size"] = 1
    doc["leaf_index"] = 0
    doc["audit_path"] = []
    doc["checkpoint"] = audit.sign_checkpoint(OTHER_KEY, 1, leaf).to_dict()
    assert audit.check_proof(doc)  # self-consistent under the attacker's own key ...
    assert not audit.check_proof(doc, KEY.public_key())  # ... but not under the log's key


# -- property: any single byte changed in any stored body is found --------------------------
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 25), every=st.integers(2, 30), data=st.data())
def test_any_single_byte_mutation_is_detected(n: int, every: int, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        state = State(path, KEY, checkpoint_every=every)
        try:
            values = data.draw(st.lists(st.text(max_size=12), min_size=n, max_size=n))
            for i, v in enumerate(values):
                kind = data.draw(st.sampled_from(["audit.read", "query.refused"]))
                if kind == "audit.read":
                    state.record(kind, actor=v or None, what=v, filters={"i": i})
                else:
                    state.record(kind, workspace="ws", member=v, sql=v, rule="r", message=v)
            assert state.verify().ok
        finally:
            state.close()
        seq = data.draw(st.integers(1, n))
        con = sqlite3.connect(path, isolation_level=None)
        (text,) = con.execute("SELECT body FROM audit_records WHERE seq = ?", (seq,)).fetchone()
        raw = bytearray(text.encode())
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
        # written as TEXT, exactly as a byte edited in the file would read back
        con.execute("UPDATE audit_records SET body = CAST(? AS TEXT) WHERE seq = ?",
                    (bytes(raw), seq))
        con.close()
        report = verify(path)
        assert not report.ok
        assert report.first_bad == seq, report.problems
