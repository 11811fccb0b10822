"""One-line captions of the diagnostic plots: what each shows, then ("Good: …") what a good pair
looks like.

The same sentence is drawn under the plot in its PNG and printed under its thumbnail in
report.html, so a reader meets one explanation wherever the plot appears. Keys are the plot
names of :meth:`exo2micro.io.layout.PairLayout.plot` (without the parameter suffix).
"""

from __future__ import annotations

CAPTIONS: dict[str, str] = {
    "registration": (
        "How the final transform lays pre on post. Good: the green final outline lies on the "
        "dashed post outline, the overlay is grey except magenta stain, and texture runs on "
        "across the checkerboard seams."),
    "pre_post_heatmap": (
        "Pixel counts of aligned pre against post intensity over the tissue. Good: the "
        "autofluorescence forms one straight ridge along the k line; stained microbes sit "
        "above it."),
    "pre_post_histograms": (
        "Intensity histograms of post, aligned pre and k \u00d7 aligned pre over the tissue. "
        "Good: k \u00d7 pre lies on post except for the bright tail the stain adds."),
    "ratio_histogram": (
        "Histogram of log10(post / aligned pre) over the tissue; its peak gives k. Good: the "
        "dashed fit follows the peak and the k line sits on it; the stain forms a tail to the "
        "right."),
    "excess_heatmap": (
        "Pixels where post is brighter than pre, less the count with the two swapped, so "
        "symmetric noise cancels. Good: the autofluorescence ridge runs along the k line; the "
        "cloud above it is the stain the subtraction keeps."),
    "difference_histogram": (
        "Histogram of the difference post \u2212 k \u00d7 aligned pre over the tissue. Good: "
        "a narrow peak centred on 0 (noise) and a tail to the right from the stain; a peak "
        "away from 0 points to a wrong k."),
    "difference_image": (
        "The difference post \u2212 k \u00d7 aligned pre. Good: flat, near-white noise over "
        "the tissue and microbes as compact red spots; red and blue rims along grain edges "
        "mean misalignment."),
    "scale_map": (
        "The map of k over the field that the difference was made with, and the per-tile "
        "estimates it was fitted to. Good: the dots take the colour of the map under them; a "
        "crossed-out dot is a tile the fit set aside (stain, a fold)."),
    "detections": (
        "Sources found by stage 5, circled and coloured by SNR on the difference image. Good: "
        "circles sit on compact spots, not on grain edges or along the tissue border."),
    "detection_snr_histogram": (
        "SNR of every detected source, with the detection threshold. Good: most sources lie "
        "well right of the threshold; a pile-up just above it suggests noise peaks."),
}


def caption(name: str) -> str:
    """The caption of plot ``name`` ('' for a plot without one)."""
    return CAPTIONS.get(name, "")
