"""groups._direct_members (class -> the tensor dims it indexes, built once per distinct set) against the
plain per-member loop it replaces, including when the hash it groups by collides."""

from collections import defaultdict

import numpy as np
import pytest

from prunefx.graph.channels import groups
from prunefx.graph.channels.labels import Member


def _oracle(members, classes):
    direct = defaultdict(set)
    for member in members:
        for cls in np.unique(classes[member.labels]):
            direct[int(cls)].add((member.target, member.dim))
    return dict(direct)


def _random_space(seed: int):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 40, size=300)
    members = [Member(f"t{rng.integers(0, 6)}", int(rng.integers(0, 2)), rng.choice(300, size=int(rng.integers(1, 60))))
               for _ in range(25)]
    return members, classes


@pytest.mark.parametrize("seed", range(5))
def test_same_sets_as_the_per_member_loop(seed):
    members, classes = _random_space(seed)
    assert groups._direct_members(members, classes) == _oracle(members, classes)


def test_colliding_hashes_still_give_exact_sets(monkeypatch):
    members, classes = _random_space(7)

    class SameKeys:  # every member hashes alike: lists of equal length and parity collide
        def integers(self, low, high, size, dtype):
            return np.ones(size, dtype=dtype)

    monkeypatch.setattr(groups.np.random, "default_rng", lambda seed: SameKeys())
    assert groups._direct_members(members, classes) == _oracle(members, classes)


def test_classes_with_the_same_members_share_one_set():
    classes = np.arange(8)
    members = [Member("w", 0, np.arange(8)), Member("b", 0, np.arange(8)), Member("v", 1, np.arange(4))]
    direct = groups._direct_members(members, classes)
    assert direct[0] is direct[3] and direct[4] is direct[7] and direct[0] != direct[4]
    assert direct[0] == {("w", 0), ("b", 0), ("v", 1)}
