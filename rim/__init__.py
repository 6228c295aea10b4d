"""rim: the ConvGRU Recurrent Inference Machine (Putzky & Welling 2017) for lensed sources.

Built on :mod:`lensinv` (never the other way round). The model, training loop and
shipped weights arrive with the RIM issue; this package is installed now so that
the layout in DESIGN.md holds from the start.
"""
