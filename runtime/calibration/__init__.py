"""Calibration: the surrogate heads' weights and constant outputs fitted jointly for the model.

``trainable.py`` is one head as a differentiable ``HeadFn`` (``A(w) @ V + c``, ``w`` on the
simplex, term matrices from the kernels' torch reference); ``fit.py`` fits every replaced head
at once on KL(base ‖ replaced) over the fit split, the base model frozen, with early stopping
on the select split; it never reads the test split.
"""
