"""PeaPOD's data pipeline: sources (P5 folders, raw Amazon reviews, synthetic data) -> prepared folders.

`prepare(output_dir, **arguments)` builds a prepared folder (what `peapod-prepare` does) and
`load_prepared(path)` reads one back; see docs/data.md.
"""

__all__ = ["PrepareArguments", "PreparedData", "load_prepared", "prepare", "rebuild_dataset"]


def __getattr__(name):
    # Lazy: importing a light submodule (e.g. datasets_scripts.user_embeddings) should not import `datasets`.
    if name in __all__:
        from . import prepared

        return getattr(prepared, name)
    raise AttributeError(f"module 'datasets_scripts' has no attribute {name!r}")
