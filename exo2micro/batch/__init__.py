"""The local batch runner, by concern (``exo2micro.parallel`` re-exports its public API).

========================  ====================================================================
``plan.py``               tasks (``build_task_list``), modes, workers × threads, ``auto``,
                          argument checks
``tasks.py``              ``process_one`` (the default task function), results of dead tasks
``runners.py``            serial, thread pool, process pool, one subprocess per task
``lifecycle.py``          workers die with the runner, SIGTERM like Ctrl-C, ``__main__`` guard
``progress.py``           the runner's messages (``Reporter``), progress bars / plain lines
``report.py``             summary table and summary files
``api.py``                ``run_batch``: validate -> discover -> plan -> execute -> summarise
========================  ====================================================================
"""
