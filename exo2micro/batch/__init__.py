"""The batch, by concern: which pairs it holds and what they will cost (``discover.py``,
``preflight.py``, shared with the Nextflow pipeline's ``e2m-discover``) and the local runner
(``exo2micro.parallel`` re-exports its public API).

========================  ====================================================================
``plan.py``               tasks (``build_task_list``), modes, workers × threads, ``auto``,
                          argument checks
``tasks.py``              ``process_one`` (the default task function), results of dead tasks
``runners.py``            serial, thread pool, process pool, one subprocess per task
``lifecycle.py``          workers die with the runner, SIGTERM like Ctrl-C, ``__main__`` guard
``progress.py``           the runner's messages (``Reporter``), progress bars / plain lines
``report.py``             summary table and summary files
``api.py``                ``run_batch``: validate -> discover -> plan -> execute -> summarise
``discover.py``           raw-dir diagnosis, filename classification, samplesheet I/O
``preflight.py``          per-pair memory/time/disk estimate from TIFF headers; the batch check
``lock.py``               the output-folder lock of a local run
``memory.py``             ``MemoryTracker`` (``memory_debug``: RSS around each task)
========================  ====================================================================
"""
