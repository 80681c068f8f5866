"""The issue-14 benchmark's SAIL-VL arms train into distinct run folders: runs are reused by name, so two arms
sharing a folder would report the same model twice (the curriculum arm once read the uniform arm's run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import catalogue_rest


def test_sail_arms_have_their_own_runs_and_data():
    arms = {n: catalogue_rest.sail_arms(n) for n in catalogue_rest.SAIL_SIZES}
    names = [name for by_arm in arms.values() for name, _ in by_arm.values()]
    assert len(names) == len(set(names)) == 2 * len(catalogue_rest.SAIL_SIZES)
    for n, by_arm in arms.items():
        uniform, curriculum = (overrides for _, overrides in by_arm.values())
        assert uniform != curriculum
        assert any(o.startswith("data.train=curriculum:") for o in curriculum)
        assert not any("curriculum" in o for o in uniform)
        assert all(f"shapes:n={n}," in o for o in (uniform[0], curriculum[0]))
