"""One loaded plugin set and profile set, shared by the CLI and the Python API."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterable

from amct_targets.hooks.manager import Plugins, load_plugins
from amct_targets.profiles import ProfileSet, user_profile_dirs


@dataclass
class Session:
    plugins: Plugins
    profiles: ProfileSet
    quiet: bool = True
    progress_stream: object = field(default=None, repr=False)

    @classmethod
    def create(cls, plugins: Iterable[str] = (), targets_dirs: Iterable[str] = (),
               autoload: bool | None = None, quiet: bool | None = None) -> "Session":
        loaded = load_plugins(plugins, autoload=autoload)
        sources = list(loaded.targets.sources) + user_profile_dirs(targets_dirs)
        profiles = ProfileSet(sources, loaded.capabilities.descriptions)
        if quiet is None:
            quiet = not sys.stderr.isatty()
        return cls(loaded, profiles, quiet, sys.stderr)

    def progress(self, message: str) -> None:
        """Progress on a terminal; silent in --json mode and when stderr is not a terminal."""
        if not self.quiet:
            print(f"amct-targets: {message}", file=self.progress_stream, flush=True)
