"""One-line captions of the diagnostic plots: what each shows and what a good pair looks like.

The same sentence is drawn under the plot in its PNG and printed under its thumbnail in
report.html, so a reader meets one explanation wherever the plot appears. Keys are the plot
names of :meth:`exo2micro.layout.PairLayout.plot` (without the parameter suffix).
"""

from __future__ import annotations

CAPTIONS: dict[str, str] = {
    "registration": (
        "Post (magenta) over the aligned pre (green) with both tissue outlines: good alignment "
        "looks grey-white with no coloured fringes, and the outlines coincide."),
    "pre_post_heatmap": (
        "Pixel counts of pre against post intensity: mineral autofluorescence forms one "
        "straight ridge along k \u00d7 pre; stained microbes sit above it."),
    "pre_post_histograms": (
        "Intensity histograms of pre, post and k \u00d7 pre: good scaling puts k \u00d7 pre on "
        "top of post except for the bright tail the stain adds."),
    "ratio_histogram": (
        "Histogram of log10(post / pre) over the tissue: the peak is the autofluorescence "
        "brightening k; the fitted curve should follow the peak, the stain forms a right tail."),
    "excess_heatmap": (
        "Where post is brighter than the mineral alone explains: counts above the k line are "
        "stain candidates; a good fit leaves nothing systematic along the line itself."),
    "difference_histogram": (
        "Histogram of post \u2212 k \u00d7 aligned pre: a narrow peak centred on 0 (noise only) "
        "with a positive tail from the stain."),
    "difference_image": (
        "The difference post \u2212 k \u00d7 aligned pre: the background should be flat "
        "noise around 0 (white); microbes appear as compact positive spots."),
    "detections": (
        "Sources found by stage 5, circled on the difference image and coloured by SNR: "
        "circles should sit on compact spots, not on grain edges or noise."),
    "detection_snr_histogram": (
        "Signal-to-noise of every detected source with the detection threshold: real "
        "microbes form a tail well to the right of the threshold."),
}


def caption(name: str) -> str:
    """The caption of plot ``name`` ('' for a plot without one)."""
    return CAPTIONS.get(name, "")
