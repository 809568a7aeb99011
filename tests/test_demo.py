"""`jsae demo` (its reduced --quick form): offline, end to end, and the SAE it saves reloads."""

from __future__ import annotations

import pytest

import jsae
import jsae.models
import jsae.training
from jsae.cli import main

if not hasattr(jsae.models, "load_model") or not hasattr(jsae.training, "TrainConfig"):
    pytest.skip("jsae.models / jsae.training are not available yet", allow_module_level=True)


def test_quick_demo_runs_offline_and_reports(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reloaded with jsae.load" in out and "identical" in out
    recovered = float(out.split("CE loss recovered")[1].split()[0])
    assert 0.5 < recovered <= 1.01, out  # a trained SAE on a trained model: most loss recovered
    assert (tmp_path / "demo.yaml").is_file() and (tmp_path / "sae" / "eval_results.json").is_file()
    sae = jsae.load(tmp_path / "sae")
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
