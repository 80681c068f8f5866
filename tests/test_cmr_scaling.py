"""CMR scaling law: the fit recovers known parameters, and the critical ratio meets its target."""

import json

import numpy as np
import pytest
import yaml

from vlalign.errors import ConfigError
from vlalign.eval.cmr import CMRLaw, fit_cmr, points_from_runs

TRUE = dict(a=1.2, b=40.0, alpha=0.45, c=0.25, beta=0.8)


def synthetic(noise=0.0, seed=0):
    ratios, samples = np.meshgrid([0.05, 0.1, 0.2, 0.4, 0.7, 1.0], np.geomspace(500, 50_000, 6), indexing="ij")
    law = CMRLaw(**TRUE, rmse=0.0)
    loss = law.predict(ratios, samples) + noise * np.random.default_rng(seed).standard_normal(ratios.shape)
    return ratios.ravel(), samples.ravel(), loss.ravel()


def test_fit_recovers_known_parameters():
    law = fit_cmr(*synthetic())
    for name, value in TRUE.items():
        assert getattr(law, name) == pytest.approx(value, rel=0.02), name
    assert law.rmse < 1e-3


def test_fit_with_noise_predicts_held_out_points():
    law = fit_cmr(*synthetic(noise=0.005))
    truth = CMRLaw(**TRUE, rmse=0.0)
    assert law.predict(0.3, 20_000) == pytest.approx(float(truth.predict(0.3, 20_000)), abs=0.02)


def test_critical_ratio_is_the_smallest_ratio_meeting_the_target():
    law = CMRLaw(**TRUE, rmse=0.0)
    target = float(law.predict(0.3, 10_000))
    ratio = law.critical_ratio(10_000, reference=target - 0.01, tolerance=0.01)
    assert ratio == pytest.approx(0.3, rel=1e-6)
    grid = np.linspace(0.01, 1, 1000)
    feasible = grid[law.predict(grid, 10_000) <= target]
    assert feasible.min() == pytest.approx(ratio, abs=1e-3)


def test_unreachable_target_and_bad_points_raise():
    law = CMRLaw(**TRUE, rmse=0.0)
    with pytest.raises(ConfigError, match="No mixture ratio"):
        law.critical_ratio(1_000, reference=1.0)
    r, d, loss = synthetic()
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        fit_cmr(np.where(r == 1.0, 0.0, r), d, loss)
    with pytest.raises(ConfigError, match="at least 6"):
        fit_cmr(r[:3], d[:3], loss[:3])


def test_points_from_runs_reads_ratio_and_logged_losses(tmp_path):
    for ratio in (0.25, 0.5):
        run = tmp_path / f"r{ratio}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"text_ratio": ratio}}))
        rows = [{"step": 10, "samples_seen": 640, "text/heldout_loss": 2.0 + ratio}, {"step": 20, "samples_seen": 1280}]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    ratios, samples, losses = points_from_runs([tmp_path / "r0.25", tmp_path / "r0.5"])
    assert (ratios, samples, losses) == ([0.25, 0.5], [640.0, 640.0], [2.25, 2.5])


def test_cli_fits_runs_and_prints_the_critical_ratio(tmp_path, capsys):
    from vlalign.cli import main

    law = CMRLaw(**TRUE, rmse=0.0)
    runs = []
    for ratio in (0.1, 0.3, 0.6, 1.0):
        run = tmp_path / f"r{ratio}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"text_ratio": ratio}}))
        rows = [{"step": 0, "samples_seen": 0, "text/heldout_loss": 2.0}]
        rows += [{"step": s, "samples_seen": 100 * s, "text/heldout_loss": float(law.predict(ratio, 100 * s))}
                 for s in (5, 10, 20, 40, 80, 160)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
        runs.append(str(run))
    assert main(["cmr", *runs, "--tolerance", "0.1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["reference"] == 2.0 and printed["budget_samples"] == 16_000
    assert printed["critical_text_ratio"] == pytest.approx(law.critical_ratio(16_000, 2.0, 0.1), rel=0.02)
