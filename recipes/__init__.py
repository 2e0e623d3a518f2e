"""Development recipes: the scripts that train the bundled models (``python -m recipes.train_t2i``).

Not part of the installed package; they may import ``eraser``, ``classifiers`` and ``evaluation``.
"""
