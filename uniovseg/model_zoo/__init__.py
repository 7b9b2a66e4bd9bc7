"""Package data: open_clip model configs shipped with uniovseg (tiny towers for tests and the
synthetic world). Found through the package, never through the working directory."""

from importlib import resources

_registered = False


def open_clip_config_dir() -> str:
    """Absolute path of the folder holding our open_clip JSON model configs."""
    return str(resources.files(__name__).joinpath("open_clip_configs"))


def register_open_clip_configs() -> None:
    """Makes our packaged model configs known to open_clip by name (idempotent).

    open_clip looks model names up in its own registry; `add_model_config` adds every JSON file of
    a folder to it, keyed by file stem (e.g. ``uniovseg_tiny_convnext``).
    """
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(open_clip_config_dir())
    _registered = True
