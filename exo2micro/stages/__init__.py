"""The four per-pair stages. Each module exposes one ``run_<stage>`` function that reads its
inputs from a :class:`~exo2micro.layout.PairLayout`, writes its outputs atomically and returns
its stage record."""
