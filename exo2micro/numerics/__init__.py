"""The image science the stages share: the transform convention, non-rigid maps, the alignment
pyramid, the tissue footprint, the scale k and its smooth map, the alignment review, robust row
statistics."""
