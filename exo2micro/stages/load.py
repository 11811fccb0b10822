"""Stage 1 — load: read each raw TIFF once, keep the signal channel, build the pyramid.

For each of pre and post this stage

1. validates the TIFF header (corrupt, truncated, empty, absurd → :class:`InputDataError`);
2. chooses the signal channel(s) *jointly* for the pair from evenly spaced row samples, so
   pre and post use the same channels (:func:`exo2micro.io.tiffio.choose_channels`); when their
   channel counts differ (a grayscale pre with an RGB post) each image gets its own choice;
3. streams the raw image in 512-row blocks: each block is reduced to the single-channel signal
   (native dtype; summed channels are widened, never clipped), written as tiles of
   ``tiff/01_<which>_signal.tif`` and box-averaged into the first pyramid level;
4. writes the pyramid and the metadata (shape, dtype, channel choice, value range, tissue
   footprint statistics, physical pixel size and exposure time) into the stage record.

The signal channel is, in this order: the pair's own ``channel`` (a samplesheet column), the
``channel`` parameter (an index, or an OME channel name), the one OME channel named after the
dye, or the strongest channel(s). The pixel size (µm) of each image is the pair's own
``pre_pixel_size_um`` / ``post_pixel_size_um`` (samplesheet), else the ``pixel_size_um``
parameter, else what the file's metadata states (:func:`exo2micro.io.tiffio.read_physical`); the
signal TIFFs carry it in their OME-XML. The pair's own facts (:data:`exo2micro.params.PAIR_KEY`)
are part of this stage's fingerprint and are listed in its record under ``pair``.

Memory: one raw block (512 rows × width × samples), its signal, one padded tile row and the
first pyramid level (≤ 4096 px on its longer side, float32 ≤ 64 MiB) per image, plus the
decoded segment cache of the reader — for a raw file stored as a single compressed strip that
is the whole decoded image.

Threads: pre and post are streamed at once when ``threads ≥ 2`` (decoding, reductions and
compression release the GIL), each by its own writing thread. Each image's strips are read,
decoded and reduced by half the threads when that is at least 2
(:func:`exo2micro.resources.load_strip_threads`); an image then holds one raw block
more than its strip threads (:func:`exo2micro.resources.load_strips_in_flight`). When either
raw file must be decoded whole, the images are streamed one at a time, each by one thread,
and a whole-decoded image's segments are dropped as soon as it is done, so at most one
decoded raw image is held at any time (at the price of decoding pre twice: once for the
channel choice, once for streaming).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from exo2micro.errors import InputDataError
from exo2micro.io.layout import PairLayout
from exo2micro.io.records import StageRun, raw_identity
from exo2micro.io.tiffio import (
    TILE,
    ChannelChoice,
    OmeMeta,
    TiffImage,
    channel_signal,
    choose_channels,
    signal_dtype,
    to_signal,
    write_tiled,
)
from exo2micro.numerics.footprint import footprint_stats, tissue_mask
from exo2micro.numerics.pyramid import Pyramid, box_reduce, first_factor
from exo2micro.resources import load_strip_threads
from exo2micro.stages.streaming import ordered_map

WHICH = ("pre", "post")
#: A footprint covering less of the frame than this is not a sample (a speck, a hot pixel);
#: nor is one whose median is no brighter than the background's.
MIN_TISSUE_FRACTION = 0.001
#: Smallest accepted side (px) of a raw image: below it there is no footprint to align.
MIN_SIDE = 32


def _choose(strengths: dict[str, np.ndarray]) -> dict[str, ChannelChoice]:
    """The signal channel(s) of pre and post: chosen jointly when both have the same number
    of colour channels (so they use the same ones), else each on its own (a grayscale pre
    with an RGB post: the one channel of pre, the strongest of post)."""
    if len({len(s) for s in strengths.values()}) == 1:
        joint = choose_channels(list(strengths.values()))
        return {w: joint for w in strengths}
    return {w: choose_channels([s]) for w, s in strengths.items()}


def _named_choice(img: TiffImage, channel: str | None, dye: str | None
                  ) -> ChannelChoice | None:
    """The channel the ``channel`` parameter (index or name) or the dye names, or ``None``
    to choose by signal strength. Raises :class:`InputDataError` for a channel the image
    does not have."""
    names = img.physical.channel_names
    colours = img.color_channels()
    listed = ", ".join(f"{i} '{n}'" if n else str(i) for i, n in zip(colours, names)) or "0"
    if channel is not None:
        if channel.isdigit():
            index = int(channel)
            if index not in colours:
                raise InputDataError(f"{img.path}: channel={index} but the image has channels "
                                     f"{listed}")
            return ChannelChoice((index,), (), f"channel {index} (parameter channel)")
        found = [i for i in colours if i < len(names) and names[i].lower() == channel.lower()]
        if not found:
            raise InputDataError(f"{img.path}: no channel named {channel!r}; its channels are "
                                 f"{listed}")
        return ChannelChoice((found[0],), (), f"channel {found[0]} '{channel}' "
                                              f"(parameter channel)")
    if dye:
        found = [i for i in colours if i < len(names) and dye.lower() in names[i].lower()]
        if len(found) == 1:
            return ChannelChoice((found[0],), (), f"channel {found[0]} '{names[found[0]]}' "
                                                  f"(named after the dye {dye})")
    return None


def _physical(img: TiffImage, choice: ChannelChoice, given: tuple[float | None, str | None]
              ) -> dict[str, Any]:
    """Pixel size (µm; ``given`` — :attr:`~exo2micro.stage_params.LoadParams.pixel_size_um` —
    over the metadata) and the exposure time (s) of the chosen channel(s) (``None`` unless all
    of them state the same one)."""
    phys = img.physical
    pixel_size_um, source = given
    times = {phys.exposure_s[c] if c < len(phys.exposure_s) else None for c in choice.channels}
    return {"pixel_size_um": pixel_size_um if pixel_size_um is not None else phys.pixel_size_um,
            "pixel_size_source": source if pixel_size_um is not None else
            (phys.source or None),
            "exposure_s": times.pop() if len(times) == 1 else None,
            "metadata": phys.to_json()}


def _stream_signal(img: TiffImage, choice: ChannelChoice, out: Path, pyramid_out: Path,
                   compression: str | None = None, ome: OmeMeta | None = None,
                   threads: int = 1) -> dict[str, Any]:
    """Write the single-channel signal of ``img`` and its pyramid; return image metadata.

    With ``threads`` ≥ 2, that many threads read, decode and reduce the TILE-row strips
    (in order, at most ``threads + 1`` strips in flight) while this thread writes them; the
    strips are independent, so the files are the same bytes whatever ``threads`` is."""
    h, w = img.shape
    dtype = signal_dtype(img.dtype, len(choice.channels))
    factor = first_factor(h, w)
    first = np.empty((-(-h // factor), -(-w // factor)), np.float32)
    lo, hi = np.inf, -np.inf
    n_nonfinite = 0

    def strip(y0: int) -> tuple[np.ndarray, np.ndarray, float, float, int]:
        """One strip: its signal, first-level rows, value range and non-finite count."""
        sig = to_signal(img.read_window(y0, min(h, y0 + TILE), 0, w, choice.channels), dtype)
        bad = 0
        if dtype.kind == "f":
            nonfinite = ~np.isfinite(sig)
            if nonfinite.any():
                bad = int(nonfinite.sum())
                sig = np.where(nonfinite, 0, sig).astype(dtype)
        return sig, box_reduce(sig, factor), float(sig.min()), float(sig.max()), bad

    def blocks():  # type: ignore[no-untyped-def]
        nonlocal lo, hi, n_nonfinite
        starts = range(0, h, TILE)
        with ThreadPoolExecutor(threads) if threads >= 2 else nullcontext() as pool:
            for y0, (sig, reduced, s_lo, s_hi, bad) in zip(
                    starts, ordered_map(pool, strip, starts, threads + 1)):
                n_nonfinite += bad
                lo, hi = min(lo, s_lo), max(hi, s_hi)
                first[y0 // factor:y0 // factor + reduced.shape[0]] = reduced
                yield sig

    # an intermediate only the later stages read: one level (no SubIFD pyramid to build)
    write_tiled(out, (h, w), dtype, blocks(), compression=compression, ome=ome,
                pyramid=False)
    if lo == hi:
        raise InputDataError(f"{img.path}: image is constant (every pixel = {lo:g}); "
                             f"there is nothing to align")
    pyramid = Pyramid.from_first_level(first, factor, (h, w))
    pyramid.save(pyramid_out)
    mask = tissue_mask(first)
    stats = footprint_stats(first, mask, factor)
    if stats.fraction < MIN_TISSUE_FRACTION or stats.tissue_p50 <= stats.background_p50:
        raise InputDataError(f"{img.path}: no tissue found (no sizeable region brighter than "
                             f"the background: footprint {stats.fraction:.3%} of the image, "
                             f"median {stats.tissue_p50:g} vs background "
                             f"{stats.background_p50:g})")
    return {"raw": img.info.to_json(), "signal_dtype": str(dtype), "shape": [h, w],
            "value_range": [lo, hi], "nonfinite_pixels_zeroed": n_nonfinite,
            "pyramid_factors": pyramid.factors, "footprint": stats.to_json()}


def run_load(pre_raw: str | Path, post_raw: str | Path, layout: PairLayout, *,
             threads: int = 1, compression: str | None = None, dye: str | None = None
             ) -> dict[str, Any]:
    """Run stage 1 for one pair and return its record (also written to ``layout.record(1)``).

    ``compression`` is the tifffile codec of the signal TIFFs (``None``: uncompressed);
    ``dye`` names the signal channel of OME-TIFFs whose channels are named.

    Raises :class:`InputDataError` naming the file for any unusable raw image; nothing is left
    under a final output name in that case.
    """
    run = StageRun(layout, 1)
    raws = {"pre": Path(pre_raw), "post": Path(post_raw)}
    outputs = [layout.signal(w) for w in WHICH] + [layout.pyramid(w) for w in WHICH]
    images: dict[str, TiffImage] = {}
    p = layout.params.load
    channel = p.channel
    try:
        for which in WHICH:
            images[which] = TiffImage(raws[which], pages_as_channels=channel is not None)
        # identities before reading: a file replaced while we read makes the next run redo it
        identity = {w: raw_identity(raws[w]) for w in WHICH}
        whole = any(images[w].decodes_whole for w in WHICH)
        for which in WHICH:
            h, w = images[which].shape
            if min(h, w) < MIN_SIDE:
                raise InputDataError(f"{raws[which]}: image is {w}×{h} px; exo2micro needs at "
                                     f"least {MIN_SIDE} px on each side to find and align "
                                     f"the sample")
        with run.timed("channel_choice"):
            strengths = {}
            for which in WHICH:
                strengths[which] = channel_signal(images[which])
                if which != WHICH[-1]:
                    images[which].drop_cache()
            choices = _choose(strengths)
            for which in WHICH:
                named = _named_choice(images[which], channel, dye)
                choices[which] = named or choices[which]
        counts = {w: len(images[w].color_channels()) for w in WHICH}
        if counts["pre"] != counts["post"]:
            run.warn(f"pre has {counts['pre']} colour channel(s) and post {counts['post']}; "
                     f"using channel(s) {list(choices['pre'].channels)} of pre and "
                     f"{list(choices['post'].channels)} of post")

        physical = {w: _physical(images[w], choices[w], p.pixel_size_um[w])
                    for w in WHICH}

        concurrent = threads >= 2 and not whole
        strips = load_strip_threads(threads, concurrent)

        def one(which: str) -> dict[str, Any]:
            ome = OmeMeta(f"{which} signal", dye or "signal", physical[which]["pixel_size_um"])
            out = _stream_signal(images[which], choices[which], layout.signal(which),
                                 layout.pyramid(which), compression, ome, strips)
            images[which].drop_cache()
            return out | physical[which]

        with run.timed("stream"):
            if concurrent:
                with ThreadPoolExecutor(max_workers=2) as pool:
                    meta = dict(zip(WHICH, pool.map(one, WHICH)))
            else:  # the last image's segments are still cached from the channel choice
                meta = {w: one(w) for w in reversed(WHICH)}
        if whole:
            run.info["sequential_reason"] = ("a raw file must be decoded whole "
                                             "(one compressed strip)")
    except BaseException:
        # The other image may be complete, or an earlier run's files may be here: remove
        # them all, so no output of this failed stage stays under its final name.
        for path in outputs:
            path.unlink(missing_ok=True)
        raise
    finally:
        for img in images.values():
            img.close()
    run.add_outputs(outputs)
    run.info.update({"inputs": {w: str(raws[w]) for w in WHICH}, "input_identity": identity,
                     "channels": choices["post"].to_json(),
                     "channels_per_image": {w: choices[w].to_json() for w in WHICH},
                     "images": meta, "pair": dict(p.pair_facts)})
    return run.record()
