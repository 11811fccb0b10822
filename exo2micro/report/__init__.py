"""What a person looks at: the diagnostic plots and their captions, the batch summary files and
``report.html``."""
