# Hydra imports every package under the `hydra_plugins` namespace at start-up; this file makes
# `nst_launcher` one of them. There must be no `hydra_plugins/__init__.py` (it would hide every
# other installed plugin).
