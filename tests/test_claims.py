"""The packaged claims file: every implemented paper, its figures exactly as printed in the
cited table, and a complete protocol; a broken claims file is one clear error."""

from __future__ import annotations

import pytest

from busseg.errors import ConfigError
from busseg.models import list_models
from busseg.report.claims import load_claims


def test_packaged_claims_cover_the_five_papers_with_their_printed_figures():
    claims = load_claims()
    assert set(claims) == {"elad_net", "hybrid_attention_net", "acsnet", "dc_net", "attention_unet_plus"}
    assert set(claims) <= set(list_models())
    # spot checks against the papers' tables
    assert claims["elad_net"]["figures"]["dice"] == {"mean": 81.96, "std": 2.01}  # Table 6
    assert claims["elad_net"]["protocol"]["folds"] == 4 and claims["elad_net"]["protocol"]["epochs"] == 300
    assert claims["acsnet"]["figures"]["iou"] == {"mean": 78.62, "std": 1.75}  # Table 5
    assert claims["acsnet"]["figures"]["cls_accuracy"]["mean"] == 94.44  # Table 4
    assert claims["hybrid_attention_net"]["figures"]["dice"]["mean"] == 97.28  # Table 3
    assert claims["hybrid_attention_net"]["protocol"]["split_kind"] == "single-random-split"
    assert claims["dc_net"]["figures"]["hd95"]["mean"] == 5.44  # Table II
    assert claims["dc_net"]["protocol"]["split_kind"] == "external-test"
    assert claims["attention_unet_plus"]["figures"] == {}  # the paper prints no number
    for claim in claims.values():
        assert "Table" in claim["source"] or "no table" in claim["source"]


def test_a_broken_claims_file_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "claims.yaml"
    bad.write_text("unet:\n  paper: x\n  source: Table 1\n  figures: {dice: {mean: high}}\n  protocol: {split_kind: magic}\n")
    with pytest.raises(ConfigError) as info:
        load_claims(bad)
    message = str(info.value)
    assert str(bad) in message and "dice" in message and "magic" in message and "protocol lacks" in message
    with pytest.raises(ConfigError, match="cannot read"):
        load_claims(tmp_path / "missing.yaml")
