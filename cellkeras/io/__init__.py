"""Reading images and the helpers every layer shares: errors, display scaling, atomic writes.

Nothing here imports another cellkeras package; everything else may import from here.
"""
