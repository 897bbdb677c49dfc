"""The campaign's science, free of the store and of where work runs: the stability rule, the hull, the funnel,
acquisition strategies, the screening tiers' cut, structure reading and fingerprints."""
