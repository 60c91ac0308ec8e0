"""Self-contained HTML reports of a build: `OUT/index.html` and `OUT/<target>/report.html`.

Rendered from report.json content alone, so `python -m amct_targets.report OUT` can rebuild
them from a saved build folder.
"""
from __future__ import annotations

from amct_targets.report.html import (ReportError, regenerate, render_index, render_target,
                                      write_index, write_target_report)

__all__ = ["write_target_report", "write_index", "render_target", "render_index",
           "regenerate", "ReportError"]
