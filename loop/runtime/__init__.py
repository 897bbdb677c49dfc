"""Where and how the work runs: the executor (Dask or inline), worker task functions, labelling with the oracle,
checkpoint integrity, the workdir lock and stop requests, progress, fault injection and external crystal providers."""
