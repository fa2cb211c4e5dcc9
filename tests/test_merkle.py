"""RFC 6962 Merkle hashing: tree heads, the incremental frontier and inclusion proofs.

Roots are compared with a straightforward recursive implementation of RFC 6962 section 2.1
(MTH), and with the published Certificate Transparency test vectors: the eight leaf inputs,
tree heads, subtree hashes and inclusion proofs used by transparency-dev/merkle
(``testonly/constants.go``, ``proof/verify_test.go``; the same values as the original
certificate-transparency C++ ``merkle_tree_test.cc`` and trillian).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.merkle import (
    EMPTY_ROOT,
    Frontier,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_inclusion,
)

# -- Certificate Transparency / transparency-dev test vectors ------------------------------
CT_INPUTS = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [bytes.fromhex(h) for h in (  # indexed by tree size, 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# NodeHashes(): [level][index] of every complete subtree of the 8-leaf tree.
CT_NODES = [[bytes.fromhex(h) for h in level] for level in (
    ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
     "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
     "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
     "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
     "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
     "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
     "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
     "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
     "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",),
)]
# CompactTrees(): the (level, index) of the perfect subtrees covering each tree size.
CT_COMPACT = [
    [], [(0, 0)], [(1, 0)], [(1, 0), (0, 2)], [(2, 0)], [(2, 0), (0, 4)], [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)], [(3, 0)],
]
# (leaf index, 0-based, tree size, audit path) from proof/verify_test.go (1-based there).
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]
CT_LEAVES = [leaf_hash(d) for d in CT_INPUTS]


# -- a straightforward reference (RFC 6962 section 2.1, written from the text) -------------
def ref_mth(data: list[bytes]) -> bytes:
    """MTH over leaf *inputs*, by the recursive definition."""
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two smaller than n
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) over leaf inputs, by the recursive definition (RFC 6962 2.1.1)."""
    n = len(data)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, data[:k]), ref_mth(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_mth(data[:k])]


def inputs(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() * (i % 3 + 1) for i in range(n)]


def flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x08]) + b[i + 1:]


# -- hashing ----------------------------------------------------------------------------------
def test_hash_prefixes_are_rfc6962() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    # Domain separation: a leaf never hashes like an interior node over the same bytes.
    assert leaf_hash(b"L" * 32 + b"R" * 32) != node_hash(b"L" * 32, b"R" * 32)


def test_roots_match_recursive_reference_for_sizes_0_to_200() -> None:
    data = inputs(200)
    leaves = [leaf_hash(d) for d in data]
    f = Frontier()
    assert f.root() == ref_mth([]) == EMPTY_ROOT
    for n in range(1, 201):
        f.append(leaves[n - 1])
        want = ref_mth(data[:n])
        assert f.size == n
        assert f.root() == want, f"incremental root differs at size {n}"
        assert root_of(leaves[:n]) == want, f"root_of differs at size {n}"


def test_ct_vectors_tree_heads() -> None:
    for n in range(9):
        assert root_of(CT_LEAVES[:n]) == CT_ROOTS[n], f"size {n}"
        assert ref_mth(CT_INPUTS[:n]) == CT_ROOTS[n]  # the reference itself is right


def test_ct_vectors_frontier_nodes_are_the_compact_tree() -> None:
    f = Frontier()
    for n in range(9):
        if n:
            f.append(CT_LEAVES[n - 1])
        want = [[level, CT_NODES[level][index].hex()] for level, index in CT_COMPACT[n]]
        assert f.to_list() == want, f"size {n}"


def test_ct_vectors_inclusion_proofs() -> None:
    for index, size, path in CT_INCLUSION:
        want = [bytes.fromhex(p) for p in path]
        assert inclusion_proof(CT_LEAVES[:size], index) == want, (index, size)
        assert verify_inclusion(CT_LEAVES[index], index, size, want, CT_ROOTS[size])


# -- frontier persistence -------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 100])
def test_frontier_list_round_trip(n: int) -> None:
    leaves = [leaf_hash(d) for d in inputs(n + 5)]
    f = Frontier()
    for leaf in leaves[:n]:
        f.append(leaf)
    stored = json.loads(json.dumps(f.to_list()))  # as kept in the state database
    g = Frontier.from_list(n, stored)
    assert g.size == n and g.root() == f.root() == root_of(leaves[:n])
    assert g.to_list() == f.to_list()
    assert len(stored) == bin(n).count("1")  # one perfect subtree per set bit of n
    # A restored frontier keeps growing exactly like one that was never stored.
    for leaf in leaves[n:]:
        f.append(leaf)
        g.append(leaf)
        assert g.root() == f.root()
    assert g.root() == root_of(leaves)


# -- inclusion proofs -----------------------------------------------------------------------
PROOF_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 31, 32, 33, 50]


@pytest.mark.parametrize("size", PROOF_SIZES)
def test_inclusion_proof_for_every_index(size: int) -> None:
    data = inputs(size)
    leaves = [leaf_hash(d) for d in data]
    root = root_of(leaves)
    other = root_of(leaves[:-1]) if size > 1 else EMPTY_ROOT
    for i in range(size):
        path = inclusion_proof(leaves, i)
        assert path == ref_path(i, data), f"path of {i} in {size}"
        assert verify_inclusion(leaves[i], i, size, path, root)
        # wrong leaf
        assert not verify_inclusion(leaf_hash(b"not a leaf"), i, size, path, root)
        assert not verify_inclusion(leaves[(i + 1) % size], i, size, path, root) or size == 1
        # wrong index
        for j in {i - 1, i + 1, i ^ 1, i ^ 2, -1, size, size + 1}:
            if j != i:
                assert not verify_inclusion(leaves[i], j, size, path, root), (i, j, size)
        # wrong size (the probes of transparency-dev/merkle; a path alone does not pin
        # the size exactly, which is why the size is part of the signed checkpoint)
        for s in {size * 2, size // 2, 0}:
            if s != size:
                assert not verify_inclusion(leaves[i], i, s, path, root), (i, s, size)
        # wrong root
        assert not verify_inclusion(leaves[i], i, size, path, other)
        assert not verify_inclusion(leaves[i], i, size, path, flip(root, 31))
        # every single altered element of the path
        for k in range(len(path)):
            bad = [*path[:k], flip(path[k], k % 32), *path[k + 1:]]
            assert not verify_inclusion(leaves[i], i, size, bad, root), (i, size, k)
        # elements added, removed, reordered
        assert not verify_inclusion(leaves[i], i, size, [*path, root], root)
        assert not verify_inclusion(leaves[i], i, size, [root, *path], root)
        if path:
            assert not verify_inclusion(leaves[i], i, size, path[:-1], root)
            assert not verify_inclusion(leaves[i], i, size, path[1:], root)
        if len(path) > 1 and path[0] != path[1]:
            swapped = [path[1], path[0], *path[2:]]
            assert not verify_inclusion(leaves[i], i, size, swapped, root)


def test_inclusion_proof_rejects_indexes_outside_the_tree() -> None:
    leaves = CT_LEAVES[:5]
    for bad in (-1, 5, 6):
        with pytest.raises(IndexError):
            inclusion_proof(leaves, bad)
    with pytest.raises(IndexError):
        inclusion_proof([], 0)
    assert not verify_inclusion(EMPTY_ROOT, 0, 0, [], EMPTY_ROOT)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=70), st.data())
def test_inclusion_proofs_property(data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(d) for d in data]
    root = root_of(leaves)
    assert root == ref_mth(data)
    i = draw.draw(st.integers(0, len(leaves) - 1))
    path = inclusion_proof(leaves, i)
    assert verify_inclusion(leaves[i], i, len(leaves), path, root)
    j = draw.draw(st.integers(0, len(leaves) - 1))
    if leaves[j] != leaves[i]:
        assert not verify_inclusion(leaves[j], i, len(leaves), path, root)
