"""Everything a pair or a batch reads from and writes to disk: TIFF and FITS images, atomic
writes, the pair folder's layout, stage records, ``result.json`` and the typed JSON contracts
they follow, the software versions recorded in outputs, one-line reasons for OS errors."""
