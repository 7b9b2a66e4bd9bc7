"""Package data: the YAML configs and the open_clip model configs shipped with uniovseg.

Everything here is found through the package, never through the working directory, so the
configs resolve from any folder and in an installed wheel::

    from uniovseg.model_zoo import get_config_file
    get_config_file("stage2/uniovseg_convnext_large_stage2.yaml")  # absolute path

In a source checkout, ``uniovseg/model_zoo/configs`` is a link to the repository's ``configs/``
folder (one copy of every YAML); a wheel holds the files themselves.
"""

from importlib import resources
from pathlib import Path

__all__ = [
    "available_configs",
    "config_dir",
    "get_config_file",
    "open_clip_config_dir",
    "register_open_clip_configs",
    "resolve_config_file",
]

# The prefix of config paths written relative to the repository root (README commands).
_REPO_PREFIX = "configs/"

_registered = False


def config_dir() -> str:
    """Absolute path of the folder holding the packaged YAML configs."""
    return str(resources.files(__name__).joinpath("configs"))


def available_configs() -> list[str]:
    """Names of the packaged configs, relative to :func:`config_dir`, e.g.
    ``"tiny/stage1_tiny.yaml"`` (sorted; ``/`` separators on every platform)."""
    root = Path(config_dir())
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml") if p.is_file())


def get_config_file(name: str) -> str:
    """Absolute path of a packaged config.

    Args:
        name: A name from :func:`available_configs`, e.g.
            ``"stage2/uniovseg_convnext_large_stage2.yaml"``; a leading ``configs/`` (a path
            relative to the repository root) is accepted too.

    Raises:
        FileNotFoundError: no packaged config has that name (the message lists them).
    """
    relative = name.replace("\\", "/").removeprefix("./").removeprefix(_REPO_PREFIX)
    names = available_configs()
    if relative not in names:
        raise FileNotFoundError(
            f"config {name!r} is neither an existing file nor a packaged config; packaged "
            f"configs: {', '.join(names)}"
        )
    return str(Path(config_dir(), *relative.split("/")))


def resolve_config_file(path_or_name: str) -> str:
    """The config file to read for a user's ``--config-file``/``config_file`` argument.

    A path to an existing file is returned as is; otherwise a packaged config of that name (see
    :func:`get_config_file`: ``"tiny/stage1_tiny.yaml"`` or ``"configs/tiny/stage1_tiny.yaml"``),
    so the configs of the README work from any folder.

    Raises:
        FileNotFoundError: neither an existing file nor a packaged config (the message lists the
            packaged configs).
    """
    if not path_or_name:
        raise FileNotFoundError(
            f"no config file given; packaged configs: {', '.join(available_configs())}"
        )
    if Path(path_or_name).is_file():
        return str(path_or_name)
    return get_config_file(str(path_or_name))


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
