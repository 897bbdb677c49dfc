"""Names the dead-code check (vulture, `make lint`) cannot see used. Each entry says who uses it.

Tests are not scanned, so code that only tests call counts as dead unless it is public API listed here.
"""

# ruff: noqa: B018
# Read by name, not by attribute access the checker can follow.
_ = object()
_.supports_conditions  # generator capability flags: the loop's stages read them (generator.base.Generator)
_.supports_fine_tune
_.raiseExceptions  # logging's switch, set in loop.cli.main.main
_.n_features_in_  # scikit-learn's estimator protocol (PrecomputedEnsembleRegressor.fit)
_.row_factory  # sqlite3's connection hook (loop.store)
_.settings_for  # GeneratorConfig: the by-name accessor for the stages (generator capability dispatch)
_.queue  # dask-jobqueue keyword arguments, passed on as a dumped model (loop.runtime.execution)
_.account
_.local_directory
_.interface
_.cumulative_calls  # RoundFigures fields, read through dataclasses.asdict (loop.report.science)
_.within_2sigma
_.cheap_e_hull  # ScreenRow fields, read through dataclasses.asdict (loop.cli.screen)
_.cheap_e_hull_std
_.relaxed_because
_.VARIANTS  # emulator.update: the variant names, the public vocabulary of EmulatorVariants

# Public API exercised by the tests (and by users), not yet by the loop itself.
_.predict_batch  # emulator.tasks: Dask worker entry points (tests/emulator/test_fine_tune.py)
_.relax_batch
_.covers  # generator.seeds.Withholding
_.distance  # loop.science.fingerprint.Fingerprint
_.n_loaded  # loop.science.funnel.KnownIndex progress counter
_.add_known
_.missing_references  # loop.science.hull.OracleHull
_.decomposition
_.round_run_ids  # loop.tracking.runs.Tracker
_.min_ms_cm  # design requirement fields (loop.design.requirements), read as plain data by the MD and phonon
_.temperatures_k  # workers through DesignConfig.check_settings (loop.runtime.assessment_tasks)
_.duration_ps
_.equilibration_ps
_.min_length_a
_.temperature_k
_.tolerance_thz
_.thermal  # DesignConfig.thermal: read by name with the other expensive checks (loop.runtime.shortlist)
