"""sp-prm: process reward models from outcome reward models (SP-PRM), and reward-guided decoding.

Kept import-light: ``import sp_prm`` pulls in neither torch nor transformers.
"""

__version__ = "0.1.0"
