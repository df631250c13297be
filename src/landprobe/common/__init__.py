"""What every layer shares and no layer owns: atomic files, the result base class, argument
checks, torch.distributed helpers, hardware facts and the version.

Each module here depends on nothing else of landprobe but its siblings.
"""
