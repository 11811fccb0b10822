"""The per-pair stages. Each stage module exposes one ``run_<stage>`` function that reads its
inputs from a :class:`~exo2micro.io.layout.PairLayout`, writes its outputs atomically and returns
its stage record; ``warp.py`` (the streamed warp of stage 3) and ``streaming.py`` (block
streaming: bounded look-ahead, one writer thread per output file) are what they share."""
