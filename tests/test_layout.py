"""Output names: one name per product, the variant as a suffix only where there is one."""

from __future__ import annotations

from pathlib import Path

import pytest

from exo2micro import params as P
from exo2micro.io.layout import PairLayout, formats


def _layout() -> PairLayout:
    return PairLayout(Path("/r/S/D"), P.resolve())


def _all_products(layout: PairLayout) -> list[Path]:
    return [layout.signal("pre"), layout.signal("post"), layout.pyramid("pre"),
            layout.icp_aligned_pre("tiff"), layout.aligned_pre("tiff"),
            *(layout.difference("tiff", kind) for kind in ("moffat", "percentile", "manual")),
            layout.significance("tiff"), layout.detections("csv")]


def test_no_product_name_repeats_a_word() -> None:
    for path in _all_products(_layout()):
        words = path.stem.split("_")[1:] if path.stem[:2].isdigit() else path.stem.split("_")
        assert len(words) == len(set(words)), path.name


def test_difference_names_carry_the_variant_only_when_there_is_one() -> None:
    layout = _layout()
    assert layout.difference("tiff").name == "04_difference.tif"
    assert layout.difference("fits", "percentile").name == "04_difference_percentile.fits"
    assert layout.difference("tiff", "manual").name == "04_difference_manual.tif"


def test_every_product_has_its_own_name() -> None:
    names = [p.name for p in _all_products(_layout())]
    assert len(names) == len(set(names))


def test_an_unknown_image_format_is_refused() -> None:
    with pytest.raises(ValueError, match="'tiff' or 'fits'"):
        _layout().difference("png")


def test_a_mistyped_checkpoint_format_names_the_closest() -> None:
    with pytest.raises(ValueError, match=r"got 'tif'; did you mean 'tiff'\?"):
        formats("tif")


def test_every_stage_tool_takes_the_pairs_image_facts_with_the_runners_fingerprint(
        tmp_path: Path) -> None:
    """A pair's own image facts reach every stage tool (as under Nextflow) and give the same
    fingerprint as the local runner: a stage the runner wrote is current for the tool given the
    same facts, and not current without them."""
    from exo2micro.params import PAIR_KEY
    from exo2micro.pipeline import run_pair
    from exo2micro.synth import SynthSpec, generate_pair
    from tests.helpers_io import run_bin

    res = generate_pair(SynthSpec(width=480, height=400), tmp_path / "raw")
    pair_dir = tmp_path / "out" / "S" / "D"
    facts = {"pre_pixel_size_um": 0.5, "post_pixel_size_um": 0.5}
    run_pair("S", "D", res.pre_path, res.post_path, pair_dir, params={PAIR_KEY: facts},
             to_stage=2, threads=1)
    common = ["--sample", "S", "--dye", "D", "--pair-dir", str(pair_dir), "--threads", "1"]
    same = run_bin("e2m-align-boundary", *common, "--pixel-size-um", "0.5")
    assert same.returncode == 0 and "current" in same.stdout + same.stderr, same.stderr
    other = run_bin("e2m-align-boundary", *common)
    assert other.returncode == 0 and "current" not in other.stdout + other.stderr, other.stdout
