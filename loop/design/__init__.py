"""Design requirements of a target application and the checks that judge candidates against them.

`loop.design.requirements` holds the `design:` config section and the cheap rules (elements, cost, density, band
gap); `loop.design.electrochemistry` the stability window against Li from a hull; the MD and phonon checks sit in
modules of their own. `loop.runtime.shortlist` runs them, cheapest first, on a campaign's hits or on any structures.
"""
